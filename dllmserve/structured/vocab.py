"""The bytes each token id writes: what an answer's text is made of, for the automaton.

Only byte-level BPE tokenizers (the ByteLevel decoder of LLaDA's, Dream's / Qwen2's and the
byte tokenizers of the tiny models) are supported: their text is the concatenation of their
tokens' bytes, so an automaton over bytes lifts to tokens exactly. Added and special tokens
(EOS, EOT, the mask, chat markers) and tokens holding a NUL byte never write answer text; the
stop tokens are kept apart, for the fill after the answer.
"""

from __future__ import annotations

import hashlib
import weakref
from dataclasses import dataclass

import numpy as np

from dllmserve.errors import ValidationError

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class TokenBytes:
    ids: np.ndarray  # int64 [N]: the token ids that write answer text
    data: np.ndarray  # uint8: their bytes, concatenated in the order of `ids`
    offsets: np.ndarray  # int64 [N + 1]: token i's bytes are data[offsets[i]:offsets[i + 1]]
    vocab_size: int  # the model's logit width (ids past the tokenizer's write nothing)
    stop_ids: tuple[int, ...]  # EOS (and EOT): the answer's end and the fill after it
    fingerprint: str  # what compiled automata are cached by, with the constraint

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def token_bytes(tokenizer, vocab_size: int, stop_ids: tuple[int, ...], field: str) -> TokenBytes:
    """The answer tokens of `tokenizer` (cached per tokenizer object). Raises ValidationError
    naming `field` for a tokenizer that is not byte-level."""
    key = (vocab_size, tuple(stop_ids))
    try:
        per_tok = _CACHE.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable: computed each time
        per_tok = {}
    if key not in per_tok:
        per_tok[key] = _build(tokenizer, vocab_size, tuple(stop_ids), field)
    return per_tok[key]


def _build(tokenizer, vocab_size: int, stop_ids: tuple[int, ...], field: str) -> TokenBytes:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = type(getattr(backend, "decoder", None)).__name__
    if decoder != "ByteLevel":
        raise ValidationError(
            field, f"needs a byte-level BPE tokenizer; this model's decoder is {decoder}"
        )
    byte_of = {ch: b for b, ch in _bytes_to_unicode().items()}
    added = set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    skip = added | set(tokenizer.all_special_ids) | set(stop_ids)
    ids, chunks = [], []
    for token, i in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        if i in skip or not 0 <= i < vocab_size:
            continue
        raw = bytes(byte_of[ch] for ch in token) if all(c in byte_of for c in token) else None
        if raw and b"\x00" not in raw:
            ids.append(i)
            chunks.append(raw)
    lengths = np.array([len(c) for c in chunks], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    data = np.frombuffer(b"".join(chunks), dtype=np.uint8)
    digest = hashlib.sha256()
    for part in (np.asarray(ids, dtype=np.int64), offsets, data):
        digest.update(part.tobytes())
    digest.update(repr((vocab_size, stop_ids)).encode())
    return TokenBytes(
        np.asarray(ids, dtype=np.int64), data, offsets, vocab_size, stop_ids, digest.hexdigest()
    )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: each byte's printable stand-in in a ByteLevel vocabulary."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out
