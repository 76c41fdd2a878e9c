"""Why a generation ended, as the engine names it (`RequestOutput.finish_reason`) and as the
wire carries it (the proto's `FinishReason`): one table, read both ways by the worker that
writes a `Completed` and by those that read one (its metrics, the client)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from dllmserve.v1 import dllm_pb2 as pb

# "stop": an EOS/EOT ended the answer; "length": the canvas filled up.
TO_PB: Mapping[str, int] = MappingProxyType(
    {"stop": pb.FINISH_REASON_STOP, "length": pb.FINISH_REASON_LENGTH}
)
_FROM_PB = {v: k for k, v in TO_PB.items()}


def to_pb(reason: str | None) -> int:
    """The wire value of an engine finish reason (UNSPECIFIED for one not in the table)."""
    return TO_PB.get(reason or "", pb.FINISH_REASON_UNSPECIFIED)


def from_pb(value: int) -> str:
    """The engine's name of a wire value ("unspecified" for any value not in the table)."""
    return _FROM_PB.get(value, "unspecified")
