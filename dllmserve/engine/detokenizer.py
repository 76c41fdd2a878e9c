"""The stable prefix's text, as deltas (docs/design.md §8).

The stable prefix is the committed tokens before the first mask, cut at the first EOS/EOT
(`Request.stable_len`, `Request.answer_length`): it can only grow, so its text is streamed as
deltas. Decoding happens only when it grows, over the new tokens and a few before them, so a
step costs O(new tokens), not O(prefix); the last delta comes from decoding the whole answer,
so the deltas add up to the final text, and that decode is the answer's text
(`RequestOutput.text`): computed here only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

LOOKBACK = 6  # tokens decoded again before the new ones (covers a split UTF-8 character)


def fast_decoder(tokenizer) -> Callable[[list[int]], str]:
    """`tokenizer.decode(ids, skip_special_tokens=True)`, minus the per-call overhead of the
    Hugging Face wrapper (which walks every id in Python): the fast tokenizer's own decode,
    plus the same clean-up the wrapper would apply, so the text equals the wrapper's."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)
    cleanup = bool(getattr(tokenizer, "clean_up_tokenization_spaces", False))

    def decode(ids: list[int]) -> str:
        text = backend.decode(ids, skip_special_tokens=True)
        return tokenizer.clean_up_tokenization(text) if cleanup else text

    return decode


class IncrementalDetokenizer:
    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self._done = 0  # prefix tokens whose text was sent
        self._ended = False  # the answer's end was reached: no more text
        self.text = ""  # the deltas so far; once ended, the whole answer's text

    def update(self, generated: np.ndarray, end: int, ended: bool) -> str:
        """The new text of `generated[:end]` (the stable prefix; `ended`: cut at the answer's
        stop token). Returns "" while the new tokens end inside a UTF-8 character."""
        if self._ended or (end == self._done and not ended):
            return ""
        self._ended = ended
        if ended or end == len(generated):
            # The whole answer is known: decode it all so the deltas add up to the final text
            # exactly, whatever the tokenizer's clean-up does.
            text = self._decode(generated[:end].tolist())
            delta = text[len(self.text) :] if text.startswith(self.text) else ""
            self._done, self.text = end, text
            return delta
        lo = max(0, self._done - LOOKBACK)
        old = self._decode(generated[lo : self._done].tolist()) if lo < self._done else ""
        new = self._decode(generated[lo:end].tolist())
        if not new.startswith(old) or new.endswith("\ufffd"):
            return ""  # an incomplete character: wait for the rest of its bytes
        delta = new[len(old) :]
        self._done = end
        self.text += delta
        return delta
