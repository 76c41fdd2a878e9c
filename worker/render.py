"""The canvas of one request as text, with a placeholder for each masked position (what a
stream with `include_canvas` carries), and a step's provisional tokens and edits as wire
messages. The text delta and everything else a step decided come from the engine's StepOutput;
rendering is the worker's only text work."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dllmserve.engine.outputs import Edit, Provisional
from dllmserve.v1 import dllm_pb2 as pb

MASKED = -1


class CanvasRenderer:
    def __init__(
        self, decode: Callable[[list[int]], str], gen_length: int, placeholder: str = "_"
    ) -> None:
        self._decode = decode
        self.canvas = [MASKED] * gen_length
        self._placeholder = placeholder or "_"

    def apply(self, positions: list[int], token_ids: list[int]) -> str:
        """Commit a step's tokens; return the whole canvas rendered."""
        for p, t in zip(positions, token_ids, strict=True):
            self.canvas[p] = t
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


def provisional_tokens(
    proposed: Sequence[Provisional], decode: Callable[[list[int]], str], texts: bool
) -> list[pb.ProvisionalToken]:
    """StepUpdate.provisional from the engine's proposals; `texts` decodes each token alone
    (include_token_texts), as the committed tokens' texts are."""
    return [
        pb.ProvisionalToken(
            position=p.position,
            token_id=p.token_id,
            confidence=p.confidence,
            text=decode([p.token_id]) if texts else "",
        )
        for p in proposed
    ]


def token_edits(
    edits: Sequence[Edit], decode: Callable[[list[int]], str], texts: bool
) -> list[pb.TokenEdit]:
    """StepUpdate.edits from the engine's (LLaDA2.1): each position's old and new token."""
    return [
        pb.TokenEdit(
            position=e.position,
            old_token_id=e.old,
            new_token_id=e.new,
            text=decode([e.new]) if texts else "",
        )
        for e in edits
    ]
