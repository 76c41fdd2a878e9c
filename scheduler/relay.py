"""Relay of result streams (dllm:res:{id}) to gRPC streams.

One `ResultHub` per scheduler reads every followed result stream with a single multiplexed
XREAD, so 1,000 open gRPC streams cost one Redis connection, not 1,000 blocked ones. Each
follower has a bounded queue; a follower whose client reads slowly stops its key from being
read (the hub keeps its position) instead of growing memory.

Stream semantics (also in docs/service.md): the stream a client sees is that of the request's
latest attempt. Records of older attempts are dropped. A StepUpdate carries `attempt`; when it
changes, the client clears its canvas (the new attempt starts again at step 1). `Attach` with
(after_step, attempt) skips the steps <= after_step of that same attempt, so a client resumes
with no gap and no duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
import redis.exceptions

from dllmserve.scheduler import queue as q
from dllmserve.v1 import dllm_pb2 as pb

log = logging.getLogger(__name__)


def _id_tuple(entry_id: bytes | str) -> tuple[int, int]:
    ms, _, seq = q.s(entry_id).partition("-")
    return int(ms), int(seq or 0)


class _Follower:
    def __init__(self, key: str, after: str, maxsize: int) -> None:
        self.key = key
        self.last = _id_tuple(after)
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=maxsize)


class ResultHub:
    """Reads all followed result streams with one blocking XREAD and fans records out."""

    def __init__(self, client: aioredis.Redis, block_ms: int = 100, queue_size: int = 256) -> None:
        self._r = client
        self._block_ms = block_ms
        self._queue_size = queue_size
        self._followers: dict[str, list[_Follower]] = {}
        self._wake = asyncio.Event()

    @property
    def following(self) -> int:
        return sum(len(v) for v in self._followers.values())

    def follow(self, key: str, after: str = "0-0") -> _Follower:
        f = _Follower(key, after, self._queue_size)
        self._followers.setdefault(key, []).append(f)
        self._wake.set()
        return f

    def unfollow(self, f: _Follower) -> None:
        lst = self._followers.get(f.key)
        if lst and f in lst:
            lst.remove(f)
            if not lst:
                del self._followers[f.key]

    async def run(self) -> None:
        while True:
            # Only the followers of this snapshot get this read's records: one that joins
            # while XREAD blocks may need older records than the read started from.
            streams, readers = {}, {}
            for key, fs in self._followers.items():
                ready = [f for f in fs if not f.queue.full()]
                if ready:
                    last = min(f.last for f in ready)
                    streams[key] = f"{last[0]}-{last[1]}"
                    readers[key] = ready
            if not streams:
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self._block_ms / 1000)
                continue
            try:
                reply = await self._r.xread(streams, count=64, block=self._block_ms)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
                log.warning("result hub: redis unavailable (%s); retrying", e)
                await asyncio.sleep(0.5)
                continue
            for key, entries in reply or []:
                for f in readers.get(q.s(key), []):
                    for entry_id, fields in entries:
                        eid = _id_tuple(entry_id)
                        if eid <= f.last:
                            continue
                        if f.queue.full():
                            break
                        f.queue.put_nowait(fields)
                        f.last = eid


class ClientGone(Exception):
    """The gRPC call ended on the client's side while the relay waited."""


class RelayError(Exception):
    """A terminal error record of the request: the gRPC stream ends with this status."""

    def __init__(self, code: str, message: str, field: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


@dataclass
class _Pending:
    upd: pb.StepUpdate
    count: int


class Coalescer:
    """Merges step updates per the stream mode; merged updates still apply in order exactly."""

    def __init__(self, opts: pb.StreamOptions) -> None:
        self.mode = opts.mode or pb.STREAM_MODE_EVERY_STEP
        self.k = max(1, opts.every_k)
        self._acc: _Pending | None = None

    def reset(self) -> None:
        self._acc = None

    def add(self, upd: pb.StepUpdate, block_done: bool) -> pb.StepUpdate | None:
        if self.mode == pb.STREAM_MODE_FINAL_ONLY:
            return None
        if self._acc is None:
            self._acc = _Pending(upd, 1)
        else:
            acc = self._acc.upd
            acc.positions.extend(upd.positions)
            acc.token_ids.extend(upd.token_ids)
            acc.text_delta += upd.text_delta
            acc.canvas = upd.canvas
            acc.step, acc.total_steps = upd.step, upd.total_steps
            acc.block_index, acc.masked_left = upd.block_index, upd.masked_left
            self._acc.count += 1
        if (
            self.mode == pb.STREAM_MODE_EVERY_STEP
            or (self.mode == pb.STREAM_MODE_EVERY_K_STEPS and self._acc.count >= self.k)
            or (self.mode == pb.STREAM_MODE_BLOCKS and block_done)
        ):
            return self.flush()
        return None

    def flush(self) -> pb.StepUpdate | None:
        acc, self._acc = self._acc, None
        return acc.upd if acc is not None else None


async def follow(
    hub: ResultHub,
    client: aioredis.Redis,
    request_id: str,
    opts: pb.StreamOptions,
    after_step: int = 0,
    after_attempt: int = 0,
    poll_s: float = 10.0,
    client_gone: Callable[[], bool] | None = None,
) -> AsyncIterator[pb.GenerateEvent]:
    """Yield the request's StepUpdates and Completed; raise RelayError on a terminal error.

    `client_gone` is polled every second while no record comes: a stream whose client left
    while nothing was being written (a queued request) is not always cancelled by gRPC.
    """
    # Older attempts than the request's current one, or than the client already saw, are moot.
    floor = max(after_attempt, int(q.s(await client.hget(q.req_key(request_id), "attempt")) or 0))
    f = hub.follow(q.res_key(request_id))
    coalescer = Coalescer(opts)
    current = 0
    silent = 0.0
    try:
        while True:
            try:
                fields = await asyncio.wait_for(f.queue.get(), timeout=1.0)
                silent = 0.0
            except asyncio.TimeoutError:
                if client_gone is not None and client_gone():
                    raise ClientGone() from None
                silent += 1.0
                # No record for a while: make sure the request still exists (its keys expire).
                if silent >= poll_s:
                    silent = 0.0
                    if not await _exists(client, request_id):
                        raise RelayError("NOT_FOUND", f"request {request_id!r} expired") from None
                continue
            fields = {q.s(k): v for k, v in fields.items()}
            attempt = int(q.s(fields.get("a")) or 0)
            if attempt < max(floor, current):
                continue
            if attempt > current:
                current = attempt
                coalescer.reset()
            kind = q.s(fields.get("k"))
            if kind == q.REC_STEP:
                upd = pb.StepUpdate.FromString(fields["p"])
                if attempt == after_attempt and upd.step <= after_step:
                    continue
                out = coalescer.add(upd, q.s(fields.get("bd")) == "1")
                if out is not None:
                    yield pb.GenerateEvent(step=out)
            elif kind == q.REC_COMPLETED:
                rest = coalescer.flush()
                if rest is not None:
                    yield pb.GenerateEvent(step=rest)
                yield pb.GenerateEvent(completed=pb.Completed.FromString(fields["p"]))
                return
            elif kind == q.REC_ERROR:
                raise RelayError(
                    q.s(fields.get("code")) or "INTERNAL",
                    q.s(fields.get("msg")),
                    q.s(fields.get("field")),
                )
    finally:
        hub.unfollow(f)


async def _exists(client: aioredis.Redis, request_id: str) -> bool:
    try:
        return bool(await client.exists(q.req_key(request_id), q.res_key(request_id)))
    except redis.exceptions.ConnectionError:
        return True  # Redis is restarting: keep waiting
