"""Taking work back from workers that went down: reaped ones (their heartbeat expired) and,
by a periodic sweep, any worker still named by a request it held. What a worker had started is
suspect and runs again isolated (scheduler/isolation.py); what it had not started is queued
again as it was."""

from __future__ import annotations

import logging

import redis.asyncio as aioredis

from dllmserve.broker import redis_keys as rk
from dllmserve.broker.inbox_entry import decode_all, read_all
from dllmserve.broker.records import parse_holder, read_holder
from dllmserve.broker.scripts import AsyncBroker, Reclaim
from dllmserve.logs import event
from dllmserve.scheduler import isolation
from dllmserve.scheduler.config import SchedulerConfig
from dllmserve.scheduler.dispatch_state import DispatcherState

log = logging.getLogger(__name__)
requests_log = logging.getLogger("dllmserve.scheduler.requests")


class Reclaimer:
    def __init__(
        self,
        client: aioredis.Redis,
        broker: AsyncBroker,
        cfg: SchedulerConfig,
        state: DispatcherState,
    ) -> None:
        self._r = client
        self._broker = broker
        self.cfg = cfg  # max_attempts, result_ttl_s
        self.state = state  # the dispatcher's counters

    async def reap_dead_workers(self) -> None:
        """Queue again the work of every registered worker whose heartbeat expired."""
        for w in [rk.text(x) for x in await self._r.smembers(rk.WORKERS)]:
            if await self._r.exists(rk.worker_key(w)):
                continue
            await self.reclaim_worker(w)

    async def reclaim_worker(self, worker_id: str) -> None:
        """Take back everything a worker that went down held (its inbox lists it)."""
        entries = decode_all(await read_all(self._r, worker_id))
        rids = [rid for entry in entries for rid in entry.request_ids]
        await self._reclaim_all(rids, worker_id)
        await self._r.delete(rk.inbox_key(worker_id), rk.load_key(worker_id), rk.ctl_key(worker_id))
        await self._r.delete(rk.iso_key(worker_id))
        await self._r.srem(rk.WORKERS, worker_id)
        self.state.reaped_workers.append(worker_id)
        log.warning("reaped worker %s (%d inbox entries)", worker_id, len(entries))

    async def sweep_orphans(self) -> None:
        """Take back every request dispatched to (or running on) a worker whose heartbeat key
        is gone, whether or not it is still registered or has an inbox: whatever way a worker
        left, none of its requests stays `dispatched` to it."""
        rids = [rk.text(x) for x in await self._r.zrange(rk.ASSIGNED, 0, -1)]
        if not rids:
            return
        pipe = self._r.pipeline(transaction=False)
        for rid in rids:
            read_holder(pipe, rid)
        held = [
            (rid, *parse_holder(reply))
            for rid, reply in zip(rids, await pipe.execute(), strict=True)
        ]
        stale = [rid for rid, st, _w in held if st not in (rk.DISPATCHED, rk.RUNNING)]
        if stale:  # ended or expired without a script removing it (e.g. keys lost)
            await self._r.zrem(rk.ASSIGNED, *stale)
        workers = sorted({w for _rid, st, w in held if st in (rk.DISPATCHED, rk.RUNNING)})
        pipe = self._r.pipeline(transaction=False)
        for w in workers:
            pipe.exists(rk.worker_key(w))
        gone = {w for w, alive in zip(workers, await pipe.execute(), strict=True) if not alive}
        for w in gone:
            left = [rid for rid, st, ww in held if ww == w and st in (rk.DISPATCHED, rk.RUNNING)]
            log.warning("sweep: %d request(s) were left on gone worker %s", len(left), w)
            await self._reclaim_all(left, w)

    async def _reclaim_all(self, rids: list[str], worker_id: str) -> None:
        """Take back what a worker that went down held: what it had started are suspects,
        charged only when one ran alone (scheduler/isolation.py)."""
        if not rids:
            return
        pipe = self._r.pipeline(transaction=False)
        for rid in rids:
            read_holder(pipe, rid)
        running = [
            rid
            for rid, reply in zip(rids, await pipe.execute(), strict=True)
            if parse_holder(reply) == (rk.RUNNING, worker_id)
        ]
        plan = isolation.verdicts(running) if running else {}
        if len(running) > 1:
            log.warning(
                "worker %s went down running %d requests: they run again isolated, in two halves",
                worker_id,
                len(running),
            )
        for rid in rids:
            v = plan.get(rid, isolation.NOT_STARTED)
            await self._reclaim(rid, worker_id, v)

    async def _reclaim(self, rid: str, worker_id: str, v: isolation.Verdict) -> None:
        res = await self._broker.reclaim(
            rid,
            worker=worker_id,
            max_attempts=self.cfg.max_attempts,
            ttl_s=self.cfg.result_ttl_s,
            charge=v.charge,
            tag=v.tag,
        )
        if res is Reclaim.REQUEUED:
            self.state.reclaimed += 1
        elif res is Reclaim.DEAD:
            self.state.dead_lettered += 1
        if res in (Reclaim.REQUEUED, Reclaim.DEAD):
            name = "redelivered" if res is Reclaim.REQUEUED else "dead_lettered"
            level = logging.INFO if res is Reclaim.REQUEUED else logging.WARNING
            charged = v.charge == isolation.CHARGED
            event(
                requests_log,
                name,
                level=level,
                request_id=rid,
                worker=worker_id,
                suspects=v.tag or None,
                charged=charged or None,
            )
