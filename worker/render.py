"""Text for the stream: the stable-prefix text delta and the rendered canvas of one request.

The stable prefix is the committed tokens before the first mask, cut at the first EOS/EOT: it
can only grow, so its text is streamed as deltas. Decoding happens only when it grows, so a
step that commits tokens after a mask costs no decode.
"""

from __future__ import annotations

MASKED = -1


class TextTracker:
    def __init__(
        self,
        tokenizer,
        gen_length: int,
        stop_ids: set[int],
        placeholder: str = "_",
        include_canvas: bool = False,
    ) -> None:
        self._tok = tokenizer
        self.canvas = [MASKED] * gen_length
        self._stop = stop_ids
        self._placeholder = placeholder or "_"
        self._include_canvas = include_canvas
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
        self._stable = end
        text = self._tok.decode(self.canvas[:end], skip_special_tokens=True)
        if text.endswith("\ufffd") and not self._ended and end < len(self.canvas):
            return ""  # an incomplete multi-byte character: wait for its other bytes
        if not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent) :], text
        return delta

    def render(self) -> str:
        parts: list[str] = []
        run: list[int] = []
        for t in self.canvas:
            if t == MASKED:
                if run:
                    parts.append(self._tok.decode(run, skip_special_tokens=True))
                    run = []
                parts.append(self._placeholder)
            else:
                run.append(t)
        if run:
            parts.append(self._tok.decode(run, skip_special_tokens=True))
        return "".join(parts)

    def block_done(self, block_index: int, block_length: int) -> bool:
        lo = block_index * block_length
        return all(t != MASKED for t in self.canvas[lo : lo + block_length])
