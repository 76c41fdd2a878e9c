"""The dispatcher: pending requests -> batches of matching SparseConfig -> live workers.

Only the scheduler replica holding the Redis lease dispatches; the others stand by and take
over within one lease TTL. The leader reads `dllm:pending` through the consumer group
`dispatch`, so the entries it has read but not yet handed out stay in the group's pending list
and a new leader claims them (XAUTOCLAIM) instead of losing them. It also reaps workers whose
heartbeat expired: their inbox entries are taken back and queued again, the requests they had
started as suspects run isolated until a poison among them is found (scheduler/isolation.py).
A sweep takes back any request still held by a worker whose heartbeat is gone, however it left
(`dllm:assigned` lists them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

import redis.asyncio as aioredis
import redis.exceptions

from dllmserve.logs import event
from dllmserve.scheduler import isolation
from dllmserve.scheduler import queue as q
from dllmserve.scheduler.isolation import Candidate
from dllmserve.scheduler.reclaim import Reclaimer
from dllmserve.scheduler.redis_link import Backoff

log = logging.getLogger(__name__)
requests_log = logging.getLogger("dllmserve.scheduler.requests")


@dataclass
class DispatcherConfig:
    lease_ttl_ms: int = 3000
    max_batch: int = 32
    max_attempts: int = 3
    result_ttl_s: int = 3600
    reap_interval_s: float = 0.5
    sweep_interval_s: float = 5.0
    # a request waits this long for a ready worker of its model, then fails UNAVAILABLE
    worker_wait_s: float = 10.0
    read_block_ms: int = 100


@dataclass
class _Entry:
    entry_id: str
    request_id: str


@dataclass
class DispatcherState:
    leader: bool = False
    dispatched: int = 0
    reclaimed: int = 0
    dead_lettered: int = 0
    reaped_workers: deque = field(default_factory=lambda: deque(maxlen=100))


class Dispatcher:
    def __init__(
        self, client: aioredis.Redis, scheduler_id: str, cfg: DispatcherConfig | None = None
    ) -> None:
        self._r = client
        self._id = scheduler_id
        self.cfg = cfg or DispatcherConfig()
        self._scripts = q.register_scripts(client)
        self._buffer: dict[str, _Entry] = {}
        self._last_reap = 0.0
        self._last_orphan_sweep = 0.0
        self._last_sweep = 0.0
        self.state = DispatcherState()
        self._reclaimer = Reclaimer(client, self._scripts, self.cfg, self.state)
        self._stopping = False
        # models whose requests wait with no ready worker -> since when (monotonic)
        self._starved: dict[str, float] = {}

    @property
    def is_leader(self) -> bool:
        return self.state.leader

    async def run(self) -> None:
        backoff = Backoff(log, "dispatcher")
        while not self._stopping:
            try:
                await self._tick()
                backoff.ok()
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
                self._lose_lease()
                await asyncio.sleep(backoff.failed(e))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dispatcher tick failed")
                await asyncio.sleep(0.5)

    async def stop(self) -> None:
        """Hand the lease to another replica (graceful drain)."""
        self._stopping = True
        if self.state.leader:
            try:
                await self._scripts.lease_release(keys=[q.LEASE], args=[self._id])
            except redis.exceptions.RedisError:
                pass
        self._lose_lease()

    def _lose_lease(self) -> None:
        self.state.leader = False
        self._buffer.clear()

    async def _tick(self) -> None:
        held = await self._scripts.lease_acquire(
            keys=[q.LEASE], args=[self._id, self.cfg.lease_ttl_ms]
        )
        if not held:
            self._lose_lease()
            await asyncio.sleep(self.cfg.lease_ttl_ms / 3000)
            return
        if not self.state.leader:
            self.state.leader = True
            await self._ensure_group()
            await self._claim_orphans()
            log.info("scheduler %s is now the dispatcher", self._id)
        now = time.monotonic()
        if now - self._last_reap >= self.cfg.reap_interval_s:
            self._last_reap = now
            await self.reap_dead_workers()
        if now - self._last_orphan_sweep >= self.cfg.sweep_interval_s:
            self._last_orphan_sweep = now
            await self.sweep_orphans()
        await self._read_new(block_ms=self.cfg.read_block_ms if not self._buffer else 20)
        await self._dispatch()

    async def _ensure_group(self) -> None:
        try:
            await self._r.xgroup_create(q.PENDING, q.DISPATCH_GROUP, id="0", mkstream=True)
        except redis.exceptions.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def _claim_orphans(self) -> None:
        """Take over the entries a previous leader had read but not handed out."""
        self._buffer.clear()
        cursor = "0-0"
        for _ in range(10_000):
            reply = await self._r.xautoclaim(
                q.PENDING, q.DISPATCH_GROUP, self._id, min_idle_time=0, start_id=cursor, count=500
            )
            cursor, entries = q.s(reply[0]), reply[1]
            for entry_id, fields in entries:
                self._add(entry_id, fields)
            if cursor == "0-0":
                break

    async def _read_new(self, block_ms: int) -> None:
        try:
            reply = await self._r.xreadgroup(
                q.DISPATCH_GROUP, self._id, {q.PENDING: ">"}, count=512, block=block_ms
            )
        except redis.exceptions.ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            await self._ensure_group()  # the stream was lost (Redis without persistence)
            return
        for _key, entries in reply or []:
            for entry_id, fields in entries:
                self._add(entry_id, fields)

    def _add(self, entry_id: bytes, fields: dict | None) -> None:
        eid = q.s(entry_id)
        rid = q.s((fields or {}).get(b"id"))
        self._buffer[eid] = _Entry(eid, rid)

    async def _dispatch(self) -> None:
        if not self._buffer:
            return
        workers = await self.live_workers()
        now_m = time.monotonic()
        if not any(w.free > 0 for w in workers) and now_m - self._last_sweep < 1.0:
            return  # nothing can be handed out: sweep cancelled/expired entries once a second
        self._last_sweep = now_m
        entries = list(self._buffer.values())
        pipe = self._r.pipeline(transaction=False)
        for e in entries:
            pipe.hmget(q.req_key(e.request_id), "status", "group", "priority", "deadline",
                       "model", "iso", "t_enq")  # fmt: skip
        metas = await pipe.execute()
        now = time.time()
        groups: dict[str, list[tuple[int, _Entry]]] = defaultdict(list)
        group_model: dict[str, str] = {}
        for e, (status, group, prio, deadline, model, iso, t_enq) in zip(entries, metas,
                                                                         strict=True):  # fmt: skip
            st, dl = q.s(status), float(q.s(deadline) or 0)
            if st != q.QUEUED:  # cancelled while queued, expired keys, a stale entry
                await self._drop(e, q.CANCELLED, "CANCELLED", "cancelled")
            elif dl and now > dl:
                await self._drop(e, q.EXPIRED, "DEADLINE_EXCEEDED", "deadline exceeded in queue")
            elif self._gave_up(q.s(model), float(q.s(t_enq) or now), now):
                wait = self.cfg.worker_wait_s
                await self._drop(e, q.FAILED, "UNAVAILABLE", f"no ready worker serves model "
                                 f"{q.s(model)!r} (waited {wait:g} s); retry later")  # fmt: skip
            else:  # suspects of one tag form a group of their own, whatever their SparseConfig
                g = f"iso:{q.s(iso)}" if iso else q.s(group)
                groups[g].append((-int(q.s(prio) or 0), e))
                group_model[g] = q.s(model)
        if not groups:
            return
        # Suspects first (the oldest work), then highest priority, then oldest (stream ids grow
        # with time).
        ordered = sorted(groups.items(), key=_group_order)
        reserved: set[str] = set()  # workers kept for suspects this pass
        for g, members in ordered:
            members.sort(key=lambda pe: (pe[0], _id(pe[1].entry_id)))
            model, todo = group_model[g], [e for _, e in members]
            fit = [w for w in workers if not model or w.model == model]
            self._warn_starved(model, len(members), bool(fit))
            if g.startswith("iso:"):
                await self._assign_suspects(g[4:], model, todo, workers, reserved)
                continue
            fit = [w for w in fit if w.worker_id not in reserved and not w.isolating]
            for w, batch in _spread(todo, fit, self.cfg.max_batch):
                await self._assign(w, batch)

    async def _assign_suspects(
        self, tag: str, model: str, todo: list[_Entry], workers: list[Candidate], reserved: set
    ) -> None:
        """One group of suspects, all to one worker that holds nothing else (or they wait)."""
        w = isolation.place(tag, model, workers, reserved)
        if w is None:
            return
        n = min(len(todo), w.free)
        for i in range(0, n, self.cfg.max_batch):
            await self._assign(w, todo[i : min(i + self.cfg.max_batch, n)], tag)
        w.free -= n

    async def _assign(self, w: Candidate, batch: list[_Entry], tag: str = "") -> None:
        args: list[str] = [w.worker_id, repr(time.time()), tag]
        for e in batch:
            args += [e.entry_id, e.request_id]
        keys = [q.inbox_key(w.worker_id), q.load_key(w.worker_id), q.PENDING]
        ids = await self._scripts.assign(keys=keys + [q.worker_key(w.worker_id)], args=args)
        if ids is None:  # draining, or isolation refused it: the batch stays for the next pass
            return
        for e in batch:
            self._buffer.pop(e.entry_id, None)
        w.load += len(ids)
        w.iso = tag or w.iso
        self.state.dispatched += len(ids)
        for rid in ids:
            event(requests_log, "dispatched", request_id=q.s(rid), worker=w.worker_id,
                  suspects=tag or None)  # fmt: skip

    def _warn_starved(self, model: str, waiting: int, served: bool) -> None:
        """Warn once when requests of a model start waiting for a ready worker (not at every
        tick), and once when one is back."""
        if served and model in self._starved:
            del self._starved[model]
            log.info("a ready worker serves %r again", model)
        elif not served and model not in self._starved:
            self._starved[model] = time.monotonic()
            log.warning("%d request(s) for model %r wait: no ready worker serves it; they fail "
                        "after %g s", waiting, model, self.cfg.worker_wait_s)  # fmt: skip

    def _gave_up(self, model: str, t_enq: float, now: float) -> bool:
        """No ready worker of the model for `worker_wait_s`, and the request waited that long
        too: it fails (UNAVAILABLE) instead of hanging until one registers."""
        since = self._starved.get(model)
        wait = self.cfg.worker_wait_s
        return since is not None and time.monotonic() - since >= wait and now - t_enq >= wait

    async def _drop(self, e: _Entry, status: str, code: str, msg: str) -> None:
        await self._scripts.drop_queued(
            keys=[q.PENDING],
            args=[e.entry_id, e.request_id, status, code, msg, repr(time.time()),
                  self.cfg.result_ttl_s],
        )  # fmt: skip
        self._buffer.pop(e.entry_id, None)

    async def live_workers(self) -> list[Candidate]:
        ids = sorted(q.s(w) for w in await self._r.smembers(q.WORKERS))
        if not ids:
            return []
        pipe = self._r.pipeline(transaction=False)
        for w in ids:
            pipe.hmget(q.worker_key(w), "model", "slots", "state")
            pipe.get(q.load_key(w))
            pipe.get(q.iso_key(w))
        replies = await pipe.execute()
        out = []
        for i, w in enumerate(ids):
            (model, slots, state), load, iso = replies[3 * i : 3 * i + 3]
            if slots is None or q.s(state) != "ready":
                continue
            n = int(q.s(load) or 0)
            out.append(Candidate(w, q.s(model), int(q.s(slots)) - n, n, q.s(iso)))
        return out

    async def reap_dead_workers(self) -> None:
        await self._reclaimer.reap_dead_workers()

    async def sweep_orphans(self) -> None:
        await self._reclaimer.sweep_orphans()


def _spread(
    todo: list[_Entry], workers: list[Candidate], max_batch: int
) -> list[tuple[Candidate, list[_Entry]]]:
    """Split one group's requests (in priority order) over the workers: each request goes to
    the worker with the most free slots at that point, a tie to the one already taking part of
    this group (so a group stays in one batch while that is fair). A burst is thus shared
    evenly instead of filling the first idle worker up to `max_batch`. Consumes `w.free`;
    returns the batches (at most `max_batch` requests each), what no slot is free for stays."""
    plan: dict[str, list[_Entry]] = {}
    for e in todo:
        open_ = [w for w in workers if w.free > 0]
        if not open_:
            break
        w = max(open_, key=lambda w: (w.free, w.worker_id in plan))
        plan.setdefault(w.worker_id, []).append(e)
        w.free -= 1
    by_id = {w.worker_id: w for w in workers}
    return [
        (by_id[wid], reqs[i : i + max_batch])
        for wid, reqs in plan.items()
        for i in range(0, len(reqs), max_batch)
    ]


def _group_order(kv: tuple[str, list[tuple[int, _Entry]]]) -> tuple:
    return (not kv[0].startswith("iso:"), min((p, _id(e.entry_id)) for p, e in kv[1]))


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
