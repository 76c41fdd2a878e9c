"""Each Lua script behind one call with named arguments and a typed reply.

`Broker` serves a synchronous Redis client (the worker, tests), `AsyncBroker` an asyncio one
(the scheduler). Both build the same `_Call` (keys, argv, how to read the reply), so the ARGV
order of a script is spelled here once, beside nothing else.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dllmserve.broker import lua
from dllmserve.broker import redis_keys as rk
from dllmserve.broker.admission import Admission


class Enqueue(enum.Enum):
    """What `enqueue` made of a request; the refusals carry no request into the queue."""

    QUEUED = "queued"  # value: its position in the queue
    DUPLICATE = "duplicate"  # the same id and body: value is its status
    QUEUE_FULL = "queue_full"  # value: how many wait
    CONFLICT = "conflict"  # the id holds a different body: value is its status
    NOT_YOURS = "not_yours"  # the id belongs to another client (owned ids are hidden)
    CLIENT_CAP = "client_cap"  # the client's bucket is at its cap: value is how many it has


@dataclass(frozen=True)
class Enqueued:
    outcome: Enqueue
    value: str  # see `Enqueue`


class Cancel(enum.Enum):
    NOT_FOUND = "notfound"
    CANCELLED = "cancelled"  # it was queued: ended now
    CANCELLING = "cancelling"  # its worker was told; it ends at the worker's next iteration
    DONE = "done"  # already ended: the terminal status it had
    FAILED = "failed"
    EXPIRED = "expired"
    DEAD = "dead"


# RECLAIM's charge: CHARGED, it ran alone when its worker went down (a crash counts against
# it); SUSPECT, one of several (it runs isolated, uncharged); HANDED_BACK by a draining worker.
CHARGED, SUSPECT, HANDED_BACK = "1", "s", "0"


class Reclaim(enum.Enum):
    SKIP = "skip"  # not held by that worker (finished, or reclaimed already)
    REQUEUED = "requeued"
    CANCELLED = "cancelled"  # it was cancelled meanwhile: ended now
    DEAD = "dead"  # dead-lettered after its last crash


@dataclass(frozen=True)
class StoredRequest:
    """What the scheduler stores of an accepted request (the fields of `dllm:req:{id}`)."""

    request_id: str
    admission: Admission  # what the scheduler validated: the worker runs exactly this
    model: str
    priority: int
    deadline: float  # unix seconds; 0: none
    options: bytes  # the StreamOptions of the call that enqueued it
    client: str  # who owns the id
    quota: str  # the per-client cap's bucket ("" : the client)
    last_step: int  # the largest step it can take (Attach refuses later ones)
    ttl_s: int  # how long its records live once it ends (every process uses this one)

    def hash_fields(self) -> dict[str, Any]:
        """Its fields in the request hash, by name (ENQUEUE writes them as they are). The same
        id with another admission, model or priority is another request (a conflict)."""
        stored: dict[str, Any] = {
            "admission": self.admission.encode(),
            "model": self.model,
            "priority": self.priority,
            "deadline": repr(self.deadline),
            "opts": self.options,
            "client": self.client,
            "steps": self.last_step,
            "ttl": self.ttl_s,
        }
        if self.quota:
            stored["quota"] = self.quota
        return stored


@dataclass(frozen=True)
class Started:
    """A dispatched request a worker took (`start`), read from the request hash by name."""

    attempt: int
    admission: Admission | None  # None: the hash holds none this worker can read
    enqueued_at: float
    deadline: float  # unix seconds; 0: none
    options: bytes

    FIELDS = ("attempt", "admission", "t_enq", "deadline", "opts")

    @classmethod
    def parse(cls, reply: Any) -> Started | None:
        if not reply:
            return None
        fields = dict(zip(cls.FIELDS, reply, strict=True))
        try:
            admission = Admission.decode(fields["admission"])
        except (ValueError, KeyError, TypeError):
            admission = None
        return cls(
            attempt=int(rk.text(fields["attempt"])),
            admission=admission,
            enqueued_at=float(rk.text(fields["t_enq"]) or 0),
            deadline=float(rk.text(fields["deadline"]) or 0),
            options=fields["opts"] or b"",
        )


@dataclass(frozen=True)
class StepRecord:
    """One step of one request, for `publish_steps`."""

    request_id: str
    attempt: int
    payload: bytes  # a serialized StepUpdate (block_done included)
    first: bool  # its first record: the stream gets its TTL and the request its t_first


@dataclass(frozen=True)
class Failure:
    """The final record of a request that ended without an answer (a gRPC status code)."""

    code: str
    msg: str
    field: str = ""  # the request field at fault, for INVALID_ARGUMENT


@dataclass(frozen=True)
class Completion:
    """The final record of a request that ended with its answer."""

    payload: bytes  # a serialized Completed


def final_fields(final: Failure | Completion) -> dict[str, Any]:
    """A final record's stream fields (the relay reads them back)."""
    if isinstance(final, Completion):
        return {"k": rk.REC_COMPLETED, "p": final.payload}
    return {"k": rk.REC_ERROR, "code": final.code, "msg": final.msg, "field": final.field}


@dataclass(frozen=True)
class _Call:
    script: str
    keys: list[str]
    args: list[Any]
    read: Callable[[Any], Any]


def _now() -> str:
    return repr(time.time())


def _enqueue(req: StoredRequest, max_queue: int, per_client: int, owned: bool) -> _Call:
    args: list[Any] = [req.request_id, max_queue, per_client, "1" if owned else "0", _now()]
    for name, value in req.hash_fields().items():
        args += [name, value]
    return _Call(
        "enqueue",
        [rk.req_key(req.request_id), rk.PENDING],
        args,
        lambda r: Enqueued(Enqueue(rk.text(r[0])), rk.text(r[1])),
    )


def _assign(worker: str, entries: Sequence[tuple[str, str]], tag: str) -> _Call:
    args: list[Any] = [worker, _now(), tag]
    for entry_id, rid in entries:
        args += [entry_id, rid]
    keys = [rk.inbox_key(worker), rk.load_key(worker), rk.PENDING, rk.worker_key(worker)]
    return _Call("assign", keys, args, lambda r: None if r is None else [rk.text(x) for x in r])


def _drop_queued(entry_id: str, rid: str, status: str, code: str, msg: str, ttl_s: int) -> _Call:
    args = [entry_id, rid, status, code, msg, _now(), ttl_s]
    return _Call("drop_queued", [rk.PENDING], args, lambda r: bool(r))


def _start(rid: str, worker: str, ttl_s: int, now: str) -> _Call:
    keys = [rk.req_key(rid), rk.load_key(worker)]
    return _Call("start", keys, [worker, now, ttl_s, rid, *Started.FIELDS], Started.parse)


def _finish(
    rid: str, worker: str, attempt: int, status: str, ttl_s: int, final: Failure | Completion
) -> _Call:
    args: list[Any] = [worker, attempt, status, _now(), ttl_s]
    for k, v in final_fields(final).items():
        args += [k, v]
    keys = [rk.req_key(rid), rk.res_key(rid), rk.load_key(worker)]
    return _Call("finish", keys, args, lambda r: bool(r))


def _cancel(rid: str, code: str, msg: str, ttl_s: int) -> _Call:
    return _Call(
        "cancel", [rk.req_key(rid)], [rid, code, msg, _now(), ttl_s], lambda r: Cancel(rk.text(r))
    )


def _reclaim(rid: str, worker: str, max_attempts: int, ttl_s: int, charge: str, tag: str) -> _Call:
    args = [worker, max_attempts, _now(), ttl_s, rid, charge, tag]
    return _Call("reclaim", [rk.req_key(rid), rk.PENDING], args, lambda r: Reclaim(rk.text(r)))


def _publish_steps(records: Sequence[StepRecord], ttl_s: int) -> _Call:
    args: list[Any] = [_now(), ttl_s]
    for rec in records:
        args += [rec.request_id, rec.attempt, "1" if rec.first else "0", rec.payload]
    return _Call("publish_steps", [], args, lambda r: None)


def _lease(holder: str, ttl_ms: int) -> _Call:
    return _Call("lease_acquire", [rk.LEASE], [holder, ttl_ms], lambda r: bool(r))


def _release(holder: str) -> _Call:
    return _Call("lease_release", [rk.LEASE], [holder], lambda r: bool(r))


_SOURCES = {
    "enqueue": lua.ENQUEUE,
    "assign": lua.ASSIGN,
    "drop_queued": lua.DROP_QUEUED,
    "start": lua.START,
    "finish": lua.FINISH,
    "cancel": lua.CANCEL,
    "reclaim": lua.RECLAIM,
    "lease_acquire": lua.LEASE_ACQUIRE,
    "lease_release": lua.LEASE_RELEASE,
    "publish_steps": lua.PUBLISH_STEPS,
}


class Broker:
    """The scripts on a synchronous Redis client."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._scripts = {name: client.register_script(src) for name, src in _SOURCES.items()}

    def batch(self) -> Batch:
        return Batch(self._scripts, self._client.pipeline(transaction=False))

    def _run(self, call: _Call) -> Any:
        return call.read(self._scripts[call.script](keys=call.keys, args=call.args))

    def enqueue(
        self, req: StoredRequest, *, max_queue: int, per_client: int = 0, owned: bool = False
    ) -> Enqueued:
        return self._run(_enqueue(req, max_queue, per_client, owned))

    def assign(
        self, worker: str, entries: Sequence[tuple[str, str]], tag: str = ""
    ) -> list[str] | None:
        """Hands the still-queued requests of (entry id, request id) pairs to a ready worker;
        None (nothing touched) when it is not ready or isolation refuses the batch."""
        return self._run(_assign(worker, entries, tag))

    def drop_queued(
        self, entry_id: str, rid: str, *, status: str, code: str, msg: str, ttl_s: int
    ) -> bool:
        return self._run(_drop_queued(entry_id, rid, status, code, msg, ttl_s))

    def start(self, rid: str, *, worker: str, ttl_s: int = rk.RESULT_TTL_S) -> Started | None:
        """Takes a request dispatched to `worker`; None when it is not (any more), or it was
        cancelled meanwhile (then it ends here)."""
        return self._run(_start(rid, worker, ttl_s, _now()))

    def finish(
        self,
        rid: str,
        *,
        worker: str,
        attempt: int,
        status: str,
        final: Failure | Completion,
        ttl_s: int = rk.RESULT_TTL_S,
    ) -> bool:
        """Publishes the final record, fenced: False unless `worker` owns this attempt."""
        return self._run(_finish(rid, worker, attempt, status, ttl_s, final))

    def cancel(self, rid: str, *, code: str, msg: str, ttl_s: int) -> Cancel:
        return self._run(_cancel(rid, code, msg, ttl_s))

    def reclaim(
        self,
        rid: str,
        *,
        worker: str,
        max_attempts: int,
        charge: str,
        tag: str = "",
        ttl_s: int = rk.RESULT_TTL_S,
    ) -> Reclaim:
        return self._run(_reclaim(rid, worker, max_attempts, ttl_s, charge, tag))

    def publish_steps(self, records: Sequence[StepRecord], *, ttl_s: int = rk.STEPS_TTL_S) -> None:
        self._run(_publish_steps(records, ttl_s))

    def lease_acquire(self, holder: str, *, ttl_ms: int) -> bool:
        return self._run(_lease(holder, ttl_ms))

    def lease_release(self, holder: str) -> bool:
        return self._run(_release(holder))


class Batch:
    """Calls queued on one pipeline: one round trip, run in order on one connection (a step's
    records before the final record of the same request). `execute` reads every reply."""

    def __init__(self, scripts: dict[str, Any], pipe: Any) -> None:
        self._scripts, self._pipe, self._calls = scripts, pipe, []
        self._now = _now()  # one time for the batch: requests taken together start together

    def _add(self, call: _Call) -> None:
        self._scripts[call.script](keys=call.keys, args=call.args, client=self._pipe)
        self._calls.append(call)

    def start(self, rid: str, *, worker: str, ttl_s: int = rk.RESULT_TTL_S) -> None:
        self._add(_start(rid, worker, ttl_s, self._now))

    def publish_steps(self, records: Sequence[StepRecord], *, ttl_s: int = rk.STEPS_TTL_S) -> None:
        self._add(_publish_steps(records, ttl_s))

    def finish(
        self,
        rid: str,
        *,
        worker: str,
        attempt: int,
        status: str,
        final: Failure | Completion,
        ttl_s: int = rk.RESULT_TTL_S,
    ) -> None:
        self._add(_finish(rid, worker, attempt, status, ttl_s, final))

    def execute(self) -> list[Any]:
        if not self._calls:
            return []
        return [c.read(r) for c, r in zip(self._calls, self._pipe.execute(), strict=True)]


class AsyncBroker:
    """The scripts on an asyncio Redis client (the scheduler)."""

    def __init__(self, client: Any) -> None:
        self._scripts = {name: client.register_script(src) for name, src in _SOURCES.items()}

    async def _run(self, call: _Call) -> Any:
        return call.read(await self._scripts[call.script](keys=call.keys, args=call.args))

    async def enqueue(
        self, req: StoredRequest, *, max_queue: int, per_client: int = 0, owned: bool = False
    ) -> Enqueued:
        return await self._run(_enqueue(req, max_queue, per_client, owned))

    async def assign(
        self, worker: str, entries: Sequence[tuple[str, str]], tag: str = ""
    ) -> list[str] | None:
        return await self._run(_assign(worker, entries, tag))

    async def drop_queued(
        self, entry_id: str, rid: str, *, status: str, code: str, msg: str, ttl_s: int
    ) -> bool:
        return await self._run(_drop_queued(entry_id, rid, status, code, msg, ttl_s))

    async def cancel(self, rid: str, *, code: str, msg: str, ttl_s: int) -> Cancel:
        return await self._run(_cancel(rid, code, msg, ttl_s))

    async def reclaim(
        self, rid: str, *, worker: str, max_attempts: int, ttl_s: int, charge: str, tag: str = ""
    ) -> Reclaim:
        return await self._run(_reclaim(rid, worker, max_attempts, ttl_s, charge, tag))

    async def lease_acquire(self, holder: str, *, ttl_ms: int) -> bool:
        return await self._run(_lease(holder, ttl_ms))

    async def lease_release(self, holder: str) -> bool:
        return await self._run(_release(holder))
