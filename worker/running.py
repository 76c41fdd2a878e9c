"""A request the worker runs: what the loop keeps of it, and the Completed it ends with."""

from __future__ import annotations

from dataclasses import dataclass

from dllmserve import finish_reasons
from dllmserve.engine.outputs import StepOutput
from dllmserve.v1 import dllm_pb2 as pb
from dllmserve.worker.render import CanvasRenderer


@dataclass
class RunningRequest:
    """The loop's record of a request its engine runs. The loop's thread creates it and reads
    only the fields fixed at admission; what publishing changes (the canvas, `t_first`) only
    the publisher's jobs touch, one at a time."""

    request_id: str
    attempt: int
    entry_id: str
    t_enq: float
    t_start: float
    deadline: float
    canvas: CanvasRenderer | None  # with include_canvas
    token_texts: bool  # with include_token_texts: each committed token's text too
    t_first: float = 0.0
    provisional: bool = False  # with StreamOptions.provisional


def completed(a: RunningRequest, u: StepOutput, now: float, worker_id: str) -> pb.Completed:
    """The final record of a request the engine finished: its answer, usage and timings."""
    out = u.output
    answer = u.answer_length if u.answer_length is not None else len(out.token_ids)
    return pb.Completed(
        request_id=a.request_id,
        text=out.text,
        token_ids=out.token_ids,
        finish_reason=finish_reasons.to_pb(out.finish_reason),
        usage=pb.Usage(
            prompt_tokens=len(out.prompt_token_ids),
            generated_tokens=answer,
            steps=out.num_steps,
            forward_passes=out.num_forward_passes,
        ),
        timings=pb.Timings(
            queued_ms=max(0.0, (a.t_start - a.t_enq) * 1000),
            first_update_ms=max(0.0, (a.t_first - a.t_enq) * 1000),
            total_ms=max(0.0, (now - a.t_enq) * 1000),
        ),
        attempt=a.attempt,
        worker_id=worker_id,
    )
