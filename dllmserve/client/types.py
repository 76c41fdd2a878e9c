"""The client's typed view of the wire messages: frozen dataclasses and enums, not protobufs.

Field names are the proto's, so the proto's comments (protos/dllmserve/v1/dllm.proto) document
them; repeated fields become tuples and `finish_reason` a `FinishReason`.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from dllmserve import finish_reasons
from dllmserve.v1 import dllm_pb2 as pb


class FinishReason(str, enum.Enum):
    """Why a generation ended; compares equal to its lower-case name (`"stop"`)."""

    UNSPECIFIED = "unspecified"
    STOP = "stop"  # an EOS/EOT ended the answer
    LENGTH = "length"  # the canvas filled up

    def __str__(self) -> str:
        return self.value

    @classmethod
    def from_pb(cls, value: int) -> FinishReason:
        return cls(finish_reasons.from_pb(value))


@dataclasses.dataclass(frozen=True)
class Accepted:
    request_id: str
    queue_position: int
    duplicate: bool
    status: str


@dataclasses.dataclass(frozen=True)
class ProvisionalToken:
    position: int
    token_id: int
    confidence: float
    text: str


@dataclasses.dataclass(frozen=True)
class TokenEdit:
    """A committed token a later step of its block replaced (LLaDA2.1's editing)."""

    position: int
    old_token_id: int
    new_token_id: int
    text: str


@dataclasses.dataclass(frozen=True)
class StepUpdate:
    step: int
    total_steps: int
    block_index: int
    positions: tuple[int, ...]
    token_ids: tuple[int, ...]
    masked_left: int
    text_delta: str
    canvas: str
    attempt: int
    token_texts: tuple[str, ...]  # with include_token_texts: the text of each committed token
    provisional: tuple[ProvisionalToken, ...]  # with StreamOptions.provisional
    edits: tuple[TokenEdit, ...] = ()  # block-diffusion models with editing_threshold
    block_done: bool = False  # this step ended its block (STREAM_MODE_BLOCKS sends here)


@dataclasses.dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    generated_tokens: int
    steps: int
    forward_passes: int


@dataclasses.dataclass(frozen=True)
class Timings:
    queued_ms: float
    first_update_ms: float
    total_ms: float


@dataclasses.dataclass(frozen=True)
class Completed:
    request_id: str
    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    usage: Usage
    timings: Timings
    attempt: int
    worker_id: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the finish reason as its name)."""
        d = dataclasses.asdict(self)
        d["finish_reason"] = str(self.finish_reason)
        d["token_ids"] = list(self.token_ids)
        return d


Event = Accepted | StepUpdate | Completed


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    name: str
    workers: int
    max_model_len: int  # 0 while no ready worker has registered its limits


@dataclasses.dataclass(frozen=True)
class WorkerInfo:
    worker_id: str
    model: str
    device: str
    state: str
    running: int
    waiting: int
    assigned: int
    slots: int
    free_pages: int
    total_pages: int
    max_num_seqs: int


@dataclasses.dataclass(frozen=True)
class ServerInfo:
    version: str
    scheduler_id: str
    dispatcher_leader: bool
    models: tuple[ModelInfo, ...]
    workers: tuple[WorkerInfo, ...]
    queue_length: int
    max_queue: int
    free_slots: int


def _convert(cls, msg, **given):
    """`cls` from the same-named fields of `msg` (repeated ones as tuples), or from `given`."""
    values = dict(given)
    for f in dataclasses.fields(cls):
        if f.name not in values:
            v = getattr(msg, f.name)
            values[f.name] = v if isinstance(v, (str, bytes, int, float)) else tuple(v)
    return cls(**values)


def event_from_pb(ev: pb.GenerateEvent) -> Event:
    kind = ev.WhichOneof("event")
    if kind == "accepted":
        return _convert(Accepted, ev.accepted)
    if kind == "step":
        s = ev.step
        provisional = tuple(_convert(ProvisionalToken, p) for p in s.provisional)
        edits = tuple(_convert(TokenEdit, e) for e in s.edits)
        return _convert(StepUpdate, s, provisional=provisional, edits=edits)
    if kind == "completed":
        c = ev.completed
        return _convert(
            Completed,
            c,
            finish_reason=FinishReason.from_pb(c.finish_reason),
            usage=_convert(Usage, c.usage),
            timings=_convert(Timings, c.timings),
        )
    raise ValueError(f"a GenerateEvent with no event set: {ev!r}")


def server_info_from_pb(info: pb.ServerInfo) -> ServerInfo:
    return _convert(
        ServerInfo,
        info,
        models=tuple(_convert(ModelInfo, m) for m in info.models),
        workers=tuple(_convert(WorkerInfo, w) for w in info.workers),
    )
