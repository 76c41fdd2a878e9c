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


@dataclass(frozen=True)
class RequestView:
    """What Attach and Cancel need of a stored request."""

    status: str  # "" when the record is gone (expired, or never was)
    client: str  # who owns the id
    options: bytes  # the StreamOptions it was enqueued with
    attempt: int
    last_step: int | None  # None for a request stored without one

    FIELDS = ("status", "client", "opts", "attempt", "steps")

    @classmethod
    def read(cls, client: Any, request_id: str) -> Any:
        """The read, run on `client` (await it on an asyncio client); `parse` its reply."""
        return client.hmget(rk.req_key(request_id), *cls.FIELDS)

    @classmethod
    def parse(cls, reply: list) -> RequestView:
        status, owner, opts, attempt, steps = reply
        last = int(rk.text(steps)) if steps is not None else None
        return cls(rk.text(status), rk.text(owner), opts or b"", int(rk.text(attempt) or 0), last)


def read_status(client: Any, request_id: str) -> Any:
    """The request's status (bytes, or None when gone): rk.text(await ...) on asyncio."""
    return client.hget(rk.req_key(request_id), "status")


def read_attempt(client: Any, request_id: str) -> Any:
    """The request's current attempt (bytes, or None when gone)."""
    return client.hget(rk.req_key(request_id), "attempt")


def set_traceparent(client: Any, request_id: str, traceparent: str) -> Any:
    """The scheduler's span of the request: the worker's span becomes its child."""
    return client.hset(rk.req_key(request_id), "tp", traceparent)


def read_traceparent(client: Any, request_id: str) -> Any:
    return client.hget(rk.req_key(request_id), "tp")


def read_holder(pipe: Any, request_id: str) -> Any:
    """(status, worker) of a request: who holds it now; `parse_holder` reads the reply."""
    return pipe.hmget(rk.req_key(request_id), "status", "worker")


def parse_holder(reply: list) -> tuple[str, str]:
    return rk.text(reply[0]), rk.text(reply[1])
