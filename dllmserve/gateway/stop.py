"""OpenAI's `stop` strings, applied by the gateway to the answer text.

A diffusion LM fills its whole canvas regardless of stop strings, so they cannot end the
denoising early; the gateway cuts the text at the first one (finish_reason "stop"). A stream
holds back a tail that could be the start of a stop string, so no client ever sees part of one.
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
