"""The dispatcher: pending requests -> batches per model (priority, then age) -> live workers.

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
from collections import defaultdict
from dataclasses import dataclass

import redis.asyncio as aioredis
import redis.exceptions

from dllmserve.broker import redis_keys as rk
from dllmserve.broker.records import QueuedView
from dllmserve.broker.redis_link import Backoff
from dllmserve.broker.scripts import AsyncBroker
from dllmserve.broker.stream_ids import stream_id
from dllmserve.broker.workers import READY, WorkerRecord
from dllmserve.logs import event
from dllmserve.scheduler import isolation
from dllmserve.scheduler.config import SchedulerConfig
from dllmserve.scheduler.dispatch_state import DispatcherState
from dllmserve.scheduler.isolation import Candidate
from dllmserve.scheduler.reclaim import Reclaimer

log = logging.getLogger(__name__)
requests_log = logging.getLogger("dllmserve.scheduler.requests")


@dataclass
class _Entry:
    entry_id: str
    request_id: str


class Dispatcher:
    def __init__(
        self, client: aioredis.Redis, scheduler_id: str, cfg: SchedulerConfig | None = None
    ) -> None:
        self._r = client
        self._id = scheduler_id
        self.cfg = cfg or SchedulerConfig()
        self._broker = AsyncBroker(client)
        self._buffer: dict[str, _Entry] = {}
        self._last_reap = 0.0
        self._last_orphan_sweep = 0.0
        self._last_sweep = 0.0
        self.state = DispatcherState()
        self._reclaimer = Reclaimer(client, self._broker, self.cfg, self.state)
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
                await self._broker.lease_release(self._id)
            except redis.exceptions.RedisError:
                pass
        self._lose_lease()

    def _lose_lease(self) -> None:
        self.state.leader = False
        self._buffer.clear()

    async def _tick(self) -> None:
        held = await self._broker.lease_acquire(self._id, ttl_ms=self.cfg.lease_ttl_ms)
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
            await self._r.xgroup_create(rk.PENDING, rk.DISPATCH_GROUP, id="0", mkstream=True)
        except redis.exceptions.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def _claim_orphans(self) -> None:
        """Take over the entries a previous leader had read but not handed out."""
        self._buffer.clear()
        cursor = "0-0"
        for _ in range(10_000):
            reply = await self._r.xautoclaim(
                rk.PENDING, rk.DISPATCH_GROUP, self._id, min_idle_time=0, start_id=cursor, count=500
            )
            cursor, entries = rk.text(reply[0]), reply[1]
            for entry_id, fields in entries:
                self._add(entry_id, fields)
            if cursor == "0-0":
                break

    async def _read_new(self, block_ms: int) -> None:
        try:
            reply = await self._r.xreadgroup(
                rk.DISPATCH_GROUP, self._id, {rk.PENDING: ">"}, count=512, block=block_ms
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
        eid = rk.text(entry_id)
        rid = rk.text((fields or {}).get(b"id"))
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
            QueuedView.read(pipe, e.request_id)
        views = [QueuedView.parse(m) for m in await pipe.execute()]
        now = time.time()
        # Requests of one model share batches whatever their sampling or sparse settings (the
        # engine mixes them in one forward); suspects of one tag form a group of their own.
        groups: dict[str, list[tuple[int, _Entry]]] = defaultdict(list)
        group_model: dict[str, str] = {}
        for e, v in zip(entries, views, strict=True):
            if v.status != rk.QUEUED:  # cancelled while queued, expired keys, a stale entry
                await self._drop(e, rk.CANCELLED, "CANCELLED", "cancelled")
            elif v.deadline and now > v.deadline:
                await self._drop(e, rk.EXPIRED, "DEADLINE_EXCEEDED", "deadline exceeded in queue")
            elif self._gave_up(v.model, v.enqueued_at or now, now):
                wait = self.cfg.worker_wait_s
                await self._drop(
                    e,
                    rk.FAILED,
                    "UNAVAILABLE",
                    f"no ready worker serves model {v.model!r} (waited {wait:g} s); retry later",
                )
            else:
                g = f"iso:{v.iso}" if v.iso else f"model:{v.model}"
                groups[g].append((-v.priority, e))
                group_model[g] = v.model
        if not groups:
            return
        # Suspects first (the oldest work), then highest priority, then oldest (stream ids grow
        # with time).
        ordered = sorted(groups.items(), key=_group_order)
        reserved: set[str] = set()  # workers kept for suspects this pass
        for g, members in ordered:
            members.sort(key=lambda pe: (pe[0], stream_id(pe[1].entry_id)))
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
        entries = [(e.entry_id, e.request_id) for e in batch]
        ids = await self._broker.assign(w.worker_id, entries, tag)
        if ids is None:  # draining, or isolation refused it: the batch stays for the next pass
            return
        for e in batch:
            self._buffer.pop(e.entry_id, None)
        w.load += len(ids)
        w.iso = tag or w.iso
        self.state.dispatched += len(ids)
        for rid in ids:
            event(
                requests_log, "dispatched", request_id=rid, worker=w.worker_id, suspects=tag or None
            )

    def _warn_starved(self, model: str, waiting: int, served: bool) -> None:
        """Warn once when requests of a model start waiting for a ready worker (not at every
        tick), and once when one is back."""
        if served and model in self._starved:
            del self._starved[model]
            log.info("a ready worker serves %r again", model)
        elif not served and model not in self._starved:
            self._starved[model] = time.monotonic()
            log.warning(
                "%d request(s) for model %r wait: no ready worker serves it; they fail after %g s",
                waiting,
                model,
                self.cfg.worker_wait_s,
            )

    def _gave_up(self, model: str, t_enq: float, now: float) -> bool:
        """No ready worker of the model for `worker_wait_s`, and the request waited that long
        too: it fails (UNAVAILABLE) instead of hanging until one registers."""
        since = self._starved.get(model)
        wait = self.cfg.worker_wait_s
        return since is not None and time.monotonic() - since >= wait and now - t_enq >= wait

    async def _drop(self, e: _Entry, status: str, code: str, msg: str) -> None:
        await self._broker.drop_queued(
            e.entry_id, e.request_id, status=status, code=code, msg=msg, ttl_s=self.cfg.result_ttl_s
        )
        self._buffer.pop(e.entry_id, None)

    async def live_workers(self) -> list[Candidate]:
        ids = sorted(rk.text(w) for w in await self._r.smembers(rk.WORKERS))
        if not ids:
            return []
        pipe = self._r.pipeline(transaction=False)
        for w in ids:
            WorkerRecord.read(pipe, w)
            pipe.get(rk.load_key(w))
            pipe.get(rk.iso_key(w))
        replies = await pipe.execute()
        out = []
        for i, w in enumerate(ids):
            reply, load, iso = replies[3 * i : 3 * i + 3]
            rec = WorkerRecord.parse(reply)
            if rec.state != READY:
                continue
            n = int(rk.text(load) or 0)
            out.append(Candidate(w, rec.model, rec.slots - n, n, rk.text(iso)))
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
    return (not kv[0].startswith("iso:"), min((p, stream_id(e.entry_id)) for p, e in kv[1]))
