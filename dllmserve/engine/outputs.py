"""What the engine hands back: one update per request per iteration, and the final result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


@dataclass
class RequestOutput:
    """The finished generation of one request.

    ``token_ids`` is the whole generated canvas (``gen_length`` tokens, the trailing EOS fill
    included) so that applying every step update in order reproduces it; ``text`` is the answer
    decoded up to the first EOS/EOT with special tokens skipped.
    """

    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" (an EOS/EOT ended the answer) or "length" (finish_reasons)
    num_steps: int
    num_forward_passes: int
    metrics: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "request_id": self.request_id,
            "text": self.text,
            "token_ids": self.token_ids,
            "prompt_token_ids": self.prompt_token_ids,
            "finish_reason": self.finish_reason,
            "num_steps": self.num_steps,
            "num_forward_passes": self.num_forward_passes,
            **self.metrics,
        }


class Provisional(NamedTuple):
    """What a step proposed for one masked position of its block: the token it would commit
    there now and the model's probability of it (docs/service.md, provisional tokens)."""

    position: int  # offset into the generated canvas
    token_id: int
    confidence: float  # in [0, 1]


class Edit(NamedTuple):
    """A committed position whose token a step replaced (LLaDA2.1's editing)."""

    position: int  # offset into the generated canvas
    old: int
    new: int


@dataclass
class StepOutput:
    """What one denoising step of one request committed, and what the engine decided with it.

    ``positions`` are offsets into the generated canvas (0 .. gen_length-1), ``token_ids`` the
    tokens committed there this step (none at a step the schedule commits nothing); an early
    stop commits the rest of the canvas (the EOS fill, or EOT's) in the same update.
    ``answer_length`` is the offset of the answer's first stop token once the committed prefix
    reaches it (None before, and at the end when the answer has none); ``text_delta`` is the
    new text of that prefix (docs/design.md §8). The last update has a ``finish_reason`` and
    carries ``output``. ``provisional`` (only for a request added with ``provisional=True``)
    holds the step's proposal for every position of its block that was masked when it ran,
    the ones it committed included, in position order. ``edits`` (LLaDA2.1) are the committed
    positions this step replaced, old and new token; they are in ``positions`` too, with the new
    token. The text deltas only cover tokens that can no longer change (with edits: the finished
    blocks').
    """

    request_id: str
    step: int  # 1-based count of steps this request has run
    total_steps: int  # the planned number of steps (an upper bound with threshold / stop_at_eos)
    block_index: int  # the block this step worked on
    phase: str  # what its forward did: "FULL", "SELECT" or "REUSE" (docs/design.md §10)
    block_length: int
    positions: list[int]
    token_ids: list[int]
    masked_left: int
    block_done: bool = False  # this step ended its block (also the last step and an early stop)
    answer_length: int | None = None
    text_delta: str = ""
    finish_reason: str | None = None  # "stop" or "length" on the last update
    output: RequestOutput | None = None
    forward_passes: int = 1  # model forwards this step ran for the request (2 with cfg)
    provisional: list[Provisional] = field(default_factory=list)
    edits: list[Edit] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
