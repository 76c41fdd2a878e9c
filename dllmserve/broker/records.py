"""Typed reads of the request hash (`dllm:req:{id}`): the fields are named here only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dllmserve.broker import redis_keys as rk


@dataclass(frozen=True)
class QueuedView:
    """What the dispatcher needs of a request waiting in `dllm:pending`."""

    status: str  # "" when the record is gone
    priority: int
    deadline: float  # unix seconds; 0: none
    model: str
    iso: str  # its isolation tag when it is a suspect, else ""
    enqueued_at: float  # 0 when the record is gone

    FIELDS = ("status", "priority", "deadline", "model", "iso", "t_enq")

    @classmethod
    def read(cls, pipe: Any, request_id: str) -> None:
        """Queue the read on a pipeline; `parse` its reply."""
        pipe.hmget(rk.req_key(request_id), *cls.FIELDS)

    @classmethod
    def parse(cls, reply: list) -> QueuedView:
        status, prio, deadline, model, iso, t_enq = (rk.text(x) for x in reply)
        return cls(status, int(prio or 0), float(deadline or 0), model, iso, float(t_enq or 0))
