"""OpenAI's `stop` strings, applied by the gateway to the answer text.

A diffusion LM fills its whole canvas regardless of stop strings, so they cannot end the
denoising early; the gateway cuts the text at the first one (finish_reason "stop"). A stream
holds back a tail that could be the start of a stop string, so no client ever sees part of one.
`usage.completion_tokens` counts the tokens of the text returned, not of the cut text: the
gateway asks for each committed token's text (only when a stop string is given) and counts
the answer's leading tokens that the returned text covers.
"""

from __future__ import annotations


def cut(text: str, stops: list[str]) -> tuple[str, bool]:
    """The text before the first stop string, and whether one was found."""
    at = min((i for s in stops if (i := text.find(s)) >= 0), default=-1)
    return (text[:at], True) if at >= 0 else (text, False)


class StopText:
    """Cuts a text that arrives in deltas at the first stop string."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.text = ""
        self.sent = 0  # characters of `text` released so far
        self.stopped = False

    def feed(self, delta: str) -> str:
        """Add a delta; return the new text that can be released."""
        if self.stopped or not delta:
            return ""
        self.text += delta
        head, self.stopped = cut(self.text, self.stops)
        end = len(head) if self.stopped else len(self.text) - self._held()
        out = self.text[self.sent : max(self.sent, end)]
        self.sent = max(self.sent, end)
        return out

    def flush(self) -> str:
        """At the end of the answer: release what was held back."""
        if self.stopped:
            return ""
        out, self.sent = self.text[self.sent :], len(self.text)
        return out

    def _held(self) -> int:
        """Length of the longest tail of `text` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:k]):
                    best = k
                    break
        return best


class TokenTexts:
    """The text of each committed answer position, gathered from a choice's step updates."""

    def __init__(self) -> None:
        self.texts: dict[int, str] = {}

    def feed(self, positions, token_texts) -> None:
        self.texts.update(zip(positions, token_texts, strict=False))

    def count(self, text: str, generated: int) -> int:
        """Leading answer tokens whose texts cover `text` (at most `generated`)."""
        covered, n = 0, 0
        while covered < len(text) and n < generated:
            covered += len(self.texts.get(n, ""))
            n += 1
        return n
