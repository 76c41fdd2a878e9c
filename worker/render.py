"""Text for the stream: the stable-prefix text delta and the rendered canvas of one request.

The stable prefix is the committed tokens before the first mask, cut at the first EOS/EOT: it
can only grow, so its text is streamed as deltas. Decoding happens only when it grows, so a
step that commits tokens after a mask costs no decode.
"""

from __future__ import annotations

MASKED = -1
LOOKBACK = 6  # tokens decoded again before the new ones (covers a split UTF-8 character)


def make_decoder(tokenizer):
    """`tokenizer.decode(ids, skip_special_tokens=True)`, minus the per-call overhead of the
    Hugging Face wrapper (which walks every id in Python): the fast tokenizer's own decode,
    plus the same clean-up the wrapper would apply, so the text equals the engine's."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)
    cleanup = bool(getattr(tokenizer, "clean_up_tokenization_spaces", False))

    def decode(ids: list[int]) -> str:
        text = backend.decode(ids, skip_special_tokens=True)
        return tokenizer.clean_up_tokenization(text) if cleanup else text

    return decode


class TextTracker:
    def __init__(
        self,
        tokenizer,  # a Hugging Face tokenizer, or a decode function (see make_decoder)
        gen_length: int,
        stop_ids: set[int],
        placeholder: str = "_",
        include_canvas: bool = False,
        include_token_texts: bool = False,
    ) -> None:
        self._decode = make_decoder(tokenizer) if hasattr(tokenizer, "decode") else tokenizer
        self.canvas = [MASKED] * gen_length
        self._stop = stop_ids
        self._placeholder = placeholder or "_"
        self._include_canvas = include_canvas
        self._include_token_texts = include_token_texts
        self._stable = 0  # length of the stable prefix already decoded
        self._ended = False  # the prefix reached a stop token: no more text
        self.sent = ""

    def apply(self, positions: list[int], token_ids: list[int]) -> tuple[str, str]:
        """Commit tokens; return (text delta, canvas text or "")."""
        for p, t in zip(positions, token_ids, strict=True):
            self.canvas[p] = t
        delta = self._delta()
        return delta, self.render() if self._include_canvas else ""

    def _delta(self) -> str:
        if self._ended:
            return ""
        end = self._stable
        while end < len(self.canvas) and self.canvas[end] != MASKED:
            if self.canvas[end] in self._stop:
                self._ended = True
                break
            end += 1
        if end == self._stable and not self._ended:
            return ""
        final = self._ended or end == len(self.canvas)
        if final:
            # The whole answer is known: decode it all so the deltas add up to the final text
            # exactly, whatever the tokenizer's clean-up does.
            text = self._decode(self.canvas[:end])
            delta = text[len(self.sent) :] if text.startswith(self.sent) else ""
        else:
            # Decode only the new tokens, with a few before them for context (a character's
            # bytes may span tokens), so a step costs O(new tokens), not O(prefix).
            lo = max(0, self._stable - LOOKBACK)
            old = self._decode(self.canvas[lo : self._stable]) if lo < self._stable else ""
            new = self._decode(self.canvas[lo:end])
            if not new.startswith(old) or new.endswith("\ufffd"):
                return ""  # an incomplete character: wait for the rest of its bytes
            delta = new[len(old) :]
        self._stable = end
        self.sent += delta
        return delta

    def token_texts(self, token_ids: list[int]) -> list[str]:
        """Each token decoded alone (for a page that shows the canvas token by token)."""
        return [self._decode([t]) for t in token_ids] if self._include_token_texts else []

    def render(self) -> str:
        parts: list[str] = []
        run: list[int] = []
        for t in self.canvas:
            if t == MASKED:
                if run:
                    parts.append(self._decode(run))
                    run = []
                parts.append(self._placeholder)
            else:
                run.append(t)
        if run:
            parts.append(self._decode(run))
        return "".join(parts)

    def block_done(self, block_index: int, block_length: int) -> bool:
        lo = block_index * block_length
        return all(t != MASKED for t in self.canvas[lo : lo + block_length])
