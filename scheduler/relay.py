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

Lost state: when Redis loses the service's state (restarted empty, flushed, failed over to a
replica without it), no record will ever come for the streams followed across the loss. The
hub notices the missing epoch marker within `GUARD_S` (dllmserve/broker/redis_link.py) and each
follower checks its request's record every `CHECK_S`; either way the stream ends with
UNAVAILABLE "request state lost; resubmit" (`LOST_MESSAGE`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
import redis.exceptions

from dllmserve.broker import redis_keys as rk
from dllmserve.broker.records import read_attempt
from dllmserve.broker.redis_link import Backoff, Epoch
from dllmserve.broker.stream_ids import stream_id
from dllmserve.v1 import dllm_pb2 as pb

log = logging.getLogger(__name__)
LOST_MESSAGE = "request state lost; resubmit"  # Redis lost the request (docs/service.md)
LOST_REASON = "REQUEST_STATE_LOST"  # its google.rpc.ErrorInfo reason
GUARD_S = 1.0  # how often the hub looks at the epoch marker
CHECK_S = 5.0  # how often a follower checks that its request still exists


_STEP, _COMPLETED, _ERROR = (k.encode() for k in (rk.REC_STEP, rk.REC_COMPLETED, rk.REC_ERROR))


class _Follower:
    def __init__(self, key: str, after: str, maxsize: int) -> None:
        self.key = key
        self.last = stream_id(after)
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=maxsize)
        self.paused = False  # left out of a read for a full queue: refresh once it has room
        self.lost = False  # Redis lost the service's state since this follower started


class ResultHub:
    """Reads all followed result streams with one blocking XREAD and fans records out.

    The XREAD covers the followers of the moment it was sent. A follower that joins while it
    blocks (a new request, an Attach), or whose full queue got room again, must not wait for
    the next record of some other stream or for the read's timeout (on an idle service that is
    the whole `block_ms`): the hub's XREAD also reads a private wake stream
    (`dllm:hub:{hub id}`), and such a follower has one entry added to it, so the read returns
    at once and the next one covers it. While nothing is followed the hub waits on an asyncio
    event instead, without Redis. `block_ms` is thus only a safety net, not a latency.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        block_ms: int = 1000,
        queue_size: int = 256,
        hub_id: str = "",
    ) -> None:
        self._r = client
        self._block_ms = block_ms
        self._queue_size = queue_size
        self._followers: dict[str, list[_Follower]] = {}
        self._wake = asyncio.Event()  # something to follow again (the hub waits without XREAD)
        self.wake_key = rk.hub_wake_key(hub_id or uuid.uuid4().hex)
        self._wake_last = "0-0"  # the last wake entry seen: none added meanwhile is missed
        self._readers: dict[str, list[_Follower]] | None = None  # those of the XREAD in flight
        self._stale = False  # a follower is not covered by the XREAD in flight
        self._poke = asyncio.Event()
        self.pokes = 0  # wake entries added (tests, metrics)
        self._expire_set = -1e9
        self._epoch = Epoch(client)
        self._backoff = Backoff(log, "result hub", max_s=2.0)

    def follow(self, key: str, after: str = "0-0") -> _Follower:
        f = _Follower(key, after, self._queue_size)
        self._followers.setdefault(key, []).append(f)
        self.refresh(f)
        return f

    def unfollow(self, f: _Follower) -> None:
        lst = self._followers.get(f.key)
        if lst and f in lst:
            lst.remove(f)
            if not lst:
                del self._followers[f.key]

    def refresh(self, f: _Follower) -> None:
        """`f` is new, or its queue has room again: make the hub read its stream now."""
        if self._readers is None:
            self._wake.set()  # not reading: the hub is (about to be) waiting for followers
        elif not any(x is f for x in self._readers.get(f.key, ())):
            self._stale = True
            self._poke.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        helpers = [loop.create_task(self._poker()), loop.create_task(self._guard())]
        try:
            await self._read_loop()
        finally:
            for t in helpers:
                t.cancel()
            for t in helpers:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    async def _guard(self) -> None:
        """Ends every followed stream at once when Redis has lost the service's state."""
        while True:
            try:
                lost = await self._epoch.check()
            except redis.exceptions.RedisError:
                lost = False  # unreachable: the read loop waits for it; judge once it is back
            if lost:
                fs = [f for lst in self._followers.values() for f in lst]
                log.error(
                    "redis lost the service's state (restarted empty, flushed or failed "
                    "over): ending %d open streams with UNAVAILABLE",
                    len(fs),
                )
                for f in fs:
                    f.lost = True
            await asyncio.sleep(GUARD_S)

    async def _read_loop(self) -> None:
        while True:
            # Only the followers of this snapshot get this read's records: one that joins
            # while XREAD blocks may need older records than the read started from.
            streams, readers = {}, {}
            for key, fs in self._followers.items():
                ready = []
                for f in fs:
                    if f.queue.full():
                        f.paused = True
                    else:
                        ready.append(f)
                if ready:
                    last = min(f.last for f in ready)
                    streams[key] = f"{last[0]}-{last[1]}"
                    readers[key] = ready
            if not streams:
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self._block_ms / 1000)
                continue
            streams[self.wake_key] = self._wake_last
            self._readers, self._stale = readers, False
            try:
                reply = await self._r.xread(streams, count=64, block=self._block_ms)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
                self._readers = None
                await asyncio.sleep(self._backoff.failed(e))
                continue
            self._backoff.ok()
            self._readers = None
            for key, entries in _streams(reply):
                key = rk.text(key)
                if key == self.wake_key:
                    if entries:
                        self._wake_last = rk.text(entries[-1][0])
                    continue
                for f in readers.get(key, []):
                    for entry_id, fields in entries:
                        eid = stream_id(entry_id)
                        if eid <= f.last:
                            continue
                        if f.queue.full():
                            break
                        f.queue.put_nowait(fields)
                        f.last = eid

    async def _poker(self) -> None:
        """Adds a wake entry when the XREAD in flight misses a follower (one per read)."""
        while True:
            await self._poke.wait()
            self._poke.clear()
            if not self._stale:
                continue  # the hub read again meanwhile, covering everyone
            self._stale = False  # one entry wakes this read; a later stale read pokes again
            try:
                await self._r.xadd(self.wake_key, {"w": 1}, maxlen=16, approximate=False)
                self.pokes += 1
                now = time.monotonic()
                if now - self._expire_set > 60:  # a stopped hub's stream goes away on its own
                    self._expire_set = now
                    await self._r.expire(self.wake_key, 3600)
            except redis.exceptions.RedisError as e:  # the XREAD fails too, then reads again
                log.warning("result hub: wake-up failed (%s)", e)

    async def close(self) -> None:
        with contextlib.suppress(redis.exceptions.RedisError):
            await self._r.delete(self.wake_key)


def _streams(reply) -> list:
    """XREAD's reply as (key, entries) pairs: a list in RESP2, a map in RESP3."""
    if not reply:
        return []
    return list(reply.items()) if isinstance(reply, dict) else reply


class ClientGone(Exception):
    """The gRPC call ended on the client's side while the relay waited."""


class RelayError(Exception):
    """A terminal error record of the request: the gRPC stream ends with this status."""

    def __init__(self, code: str, message: str, field: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.reason = reason  # the ErrorInfo reason when the code alone does not say it


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

    def add(self, upd: pb.StepUpdate) -> pb.StepUpdate | None:
        if self.mode == pb.STREAM_MODE_FINAL_ONLY:
            return None
        if self._acc is None:
            self._acc = _Pending(upd, 1)
        else:
            acc = self._acc.upd
            acc.positions.extend(upd.positions)
            acc.token_ids.extend(upd.token_ids)
            acc.token_texts.extend(upd.token_texts)
            del acc.provisional[:]  # the proposals of the last merged step, not a union
            acc.provisional.extend(upd.provisional)
            acc.edits.extend(upd.edits)  # every merged step's, in order
            acc.text_delta += upd.text_delta
            acc.canvas = upd.canvas
            acc.step, acc.total_steps = upd.step, upd.total_steps
            acc.block_index, acc.masked_left = upd.block_index, upd.masked_left
            acc.block_done = upd.block_done
            self._acc.count += 1
        if (
            self.mode == pb.STREAM_MODE_EVERY_STEP
            or (self.mode == pb.STREAM_MODE_EVERY_K_STEPS and self._acc.count >= self.k)
            or (self.mode == pb.STREAM_MODE_BLOCKS and self._acc.upd.block_done)
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
    check_s: float = CHECK_S,
    client_gone: Callable[[], bool] | None = None,
    known_attempt: int = 0,
) -> AsyncIterator[pb.GenerateEvent]:
    """Yield the request's StepUpdates and Completed; raise RelayError on a terminal error.

    `client_gone` is polled every second while no record comes: a stream whose client left
    while nothing was being written (a queued request) is not always cancelled by gRPC. Every
    `check_s` the request's record must still exist: gone, Redis lost it (RelayError
    UNAVAILABLE, `LOST_MESSAGE`), as when the hub marks the follower `lost`.
    `known_attempt`: the request's current attempt when the caller knows it (a request it
    just created: 1), else 0 (looked up).
    """
    # Followed first, so the hub reads the stream while the attempt is looked up.
    f = hub.follow(rk.res_key(request_id))
    coalescer = Coalescer(opts)
    current = 0
    next_check = time.monotonic() + check_s
    try:
        # Older attempts than the request's current one, or than the client saw, are moot.
        if not known_attempt:
            known_attempt = int(rk.text(await read_attempt(client, request_id)) or 0)
        floor = max(after_attempt, known_attempt)
        while True:
            if f.lost:
                raise RelayError("UNAVAILABLE", LOST_MESSAGE, reason=LOST_REASON)
            if time.monotonic() > next_check:
                next_check = time.monotonic() + check_s
                if not await _exists(client, request_id):
                    raise RelayError("UNAVAILABLE", LOST_MESSAGE, reason=LOST_REASON)
            try:
                fields = f.queue.get_nowait()  # a burst of records: no timer per record
            except asyncio.QueueEmpty:
                try:
                    fields = await asyncio.wait_for(f.queue.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    if client_gone is not None and client_gone():
                        raise ClientGone() from None
                    continue
            if f.paused:  # the hub left this stream out while its queue was full
                f.paused = False
                hub.refresh(f)
            attempt = int(fields.get(b"a") or 0)  # the hub hands over Redis' bytes as is
            if attempt < max(floor, current):
                continue
            if attempt > current:
                current = attempt
                coalescer.reset()
            kind = fields.get(b"k")
            if kind == _STEP:
                upd = pb.StepUpdate.FromString(fields[b"p"])
                if attempt == after_attempt and upd.step <= after_step:
                    continue
                out = coalescer.add(upd)
                if out is not None:
                    yield pb.GenerateEvent(step=out)
            elif kind == _COMPLETED:
                rest = coalescer.flush()
                if rest is not None:
                    yield pb.GenerateEvent(step=rest)
                yield pb.GenerateEvent(completed=pb.Completed.FromString(fields[b"p"]))
                return
            elif kind == _ERROR:
                raise RelayError(
                    rk.text(fields.get(b"code")) or "INTERNAL",
                    rk.text(fields.get(b"msg")),
                    rk.text(fields.get(b"field")),
                )
    finally:
        hub.unfollow(f)


async def _exists(client: aioredis.Redis, request_id: str) -> bool:
    """The request's record exists (it has no TTL while the request is unfinished)."""
    try:
        return bool(await client.exists(rk.req_key(request_id)))
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
        return True  # Redis is restarting: keep waiting
