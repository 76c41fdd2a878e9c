"""The relay hub's wake-ups and the worker's batched admission, against a real redis-server.

The hub's XREAD blocks for `block_ms` on the streams followed when it was sent. These tests
give it a block far longer than they wait (10 s), so a record that reached its follower only
when that read timed out would fail them: a follower that joins while the read blocks, or
whose full queue gets room again, must be served at once (the wake stream)."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from dllmserve.broker import redis_keys as rk
from dllmserve.broker.admission import Admission
from dllmserve.broker.inbox_entry import InboxEntry
from dllmserve.sampling_params import SamplingParams
from dllmserve.scheduler.relay import ResultHub, follow
from dllmserve.testing.fake_engine import FakeEngine
from dllmserve.v1 import dllm_pb2 as pb
from dllmserve.worker.config import WorkerConfig
from dllmserve.worker.loop import WorkerLoop

BLOCK_MS = 10_000  # the hub's read timeout in these tests: never waited for
PROMPT = 2.0  # "at once": far below BLOCK_MS, far above any scheduling hiccup


def _step(n: int, attempt: int = 1) -> bytes:
    return pb.StepUpdate(step=n, total_steps=9, positions=[n], token_ids=[n],
                         attempt=attempt).SerializeToString()  # fmt: skip


async def _blocked_on(hub: ResultHub, key: str) -> None:
    """Wait until the hub's XREAD in flight covers `key` (and nothing new since)."""
    for _ in range(500):
        readers = hub._readers
        if readers is not None and key in readers and not hub._stale:
            await asyncio.sleep(0.05)  # the XREAD itself has reached Redis and blocks
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the hub never read {key}")


def test_a_follower_joining_while_the_hub_blocks_is_served_at_once(rserver, r):
    async def main():
        client = aioredis.Redis.from_url(rserver.url)
        hub = ResultHub(client, block_ms=BLOCK_MS, hub_id="t1")
        task = asyncio.create_task(hub.run())
        try:
            idle = hub.follow(rk.res_key("idle"))  # a stream nothing is written to
            await _blocked_on(hub, rk.res_key("idle"))
            f = hub.follow(rk.res_key("new"))
            t0 = time.monotonic()
            await client.xadd(rk.res_key("new"), {"a": 1, "k": rk.REC_STEP, "p": _step(1)})
            fields = await asyncio.wait_for(f.queue.get(), timeout=PROMPT)
            waited = time.monotonic() - t0
            assert fields[b"p"] == _step(1)
            assert hub.pokes == 1  # one wake entry for that read
            assert 0 < await client.ttl(hub.wake_key) <= 3600
            # A record written before its follower joins is served at once as well.
            await client.xadd(rk.res_key("early"), {"a": 1, "k": rk.REC_STEP, "p": _step(1)})
            await _blocked_on(hub, rk.res_key("new"))
            g = hub.follow(rk.res_key("early"))
            assert (await asyncio.wait_for(g.queue.get(), timeout=PROMPT))[b"p"] == _step(1)
            hub.unfollow(idle)
        finally:
            task.cancel()
            await hub.close()
            gone = not await client.exists(hub.wake_key)
            await client.aclose()
        return waited, gone

    waited, gone = asyncio.run(main())
    assert waited < PROMPT
    assert gone  # close() removes the wake stream


def test_an_idle_hub_waits_without_redis_and_wakes_on_follow(rserver, r):
    async def main():
        client = aioredis.Redis.from_url(rserver.url)
        hub = ResultHub(client, block_ms=BLOCK_MS)
        task = asyncio.create_task(hub.run())
        try:
            await asyncio.sleep(0.1)  # nothing followed: the hub waits on its event
            f = hub.follow(rk.res_key("a"))
            await client.xadd(rk.res_key("a"), {"a": 1, "k": rk.REC_STEP, "p": _step(1)})
            await asyncio.wait_for(f.queue.get(), timeout=PROMPT)
            return hub.pokes
        finally:
            task.cancel()
            await client.aclose()

    assert asyncio.run(main()) == 0  # no wake entry was needed


def test_a_full_follower_resumes_at_once_and_in_order(rserver, r):
    """A follower whose queue filled is skipped by the hub; once its reader makes room it is
    read again at once, not after the blocked read of the other streams times out."""
    r.hset(rk.req_key("z"), mapping={"status": "running", "attempt": "1"})
    for n in range(1, 8):
        r.xadd(rk.res_key("z"), {"a": 1, "k": rk.REC_STEP, "p": _step(n)})
    r.xadd(
        rk.res_key("z"), {"a": 1, "k": rk.REC_COMPLETED, "p": pb.Completed().SerializeToString()}
    )

    async def main():
        client = aioredis.Redis.from_url(rserver.url)
        hub = ResultHub(client, block_ms=BLOCK_MS, queue_size=2)
        task = asyncio.create_task(hub.run())
        try:
            hub.follow(rk.res_key("idle"))
            await _blocked_on(hub, rk.res_key("idle"))
            t0 = time.monotonic()
            events = []

            async def collect():
                async for ev in follow(hub, client, "z", pb.StreamOptions()):
                    events.append(ev)

            await asyncio.wait_for(collect(), timeout=2 * PROMPT)
            return events, time.monotonic() - t0, hub.pokes
        finally:
            task.cancel()
            await hub.close()
            await client.aclose()

    events, waited, pokes = asyncio.run(main())
    assert [e.step.step for e in events if e.WhichOneof("event") == "step"] == list(range(1, 8))
    assert events[-1].WhichOneof("event") == "completed"
    assert waited < 2 * PROMPT and pokes >= 3


def test_worker_takes_a_whole_batch_in_one_round_trip(r):
    """The worker STARTs every request of the batches it read in one pipeline: the cancelled
    one ends CANCELLED without reaching the engine, the others run, in batch order."""
    adm = Admission([5, 6, 7], SamplingParams(gen_length=4, steps=4), None)
    for rid in ("b1", "b2", "b3", "b4"):
        r.hset(rk.req_key(rid), mapping={"admission": adm.encode(), "status": "dispatched",
                                        "worker": "w", "attempt": "1", "cancel": "0",
                                        "t_enq": repr(time.time()), "opts": b""})  # fmt: skip
    r.hset(rk.req_key("b3"), "cancel", "1")  # cancelled after dispatch, before the worker took it
    r.set(rk.load_key("w"), 4)
    engine = FakeEngine()
    loop = WorkerLoop(engine, r, WorkerConfig(async_publish=False), "w")
    loop.ensure_group()
    r.xadd(rk.inbox_key("w"), InboxEntry("", ("b1", "b2")).fields())
    r.xadd(rk.inbox_key("w"), InboxEntry("", ("b3", "b4")).fields())
    calls = []
    real_pipeline = r.pipeline

    def pipeline(*a, **kw):
        calls.append(1)
        return real_pipeline(*a, **kw)

    r.pipeline = pipeline
    try:
        loop._read_inbox(block_ms=None)
    finally:
        del r.pipeline
    assert engine.added == ["b1", "b2", "b4"]
    assert len(calls) == 1  # one pipeline for the four STARTs
    st = {rid: rk.text(r.hget(rk.req_key(rid), "status")) for rid in ("b1", "b2", "b3", "b4")}
    assert st == {"b1": rk.RUNNING, "b2": rk.RUNNING, "b3": rk.CANCELLED, "b4": rk.RUNNING}
    t = {rk.text(r.hget(rk.req_key(rid), "t_start")) for rid in ("b1", "b2", "b4")}
    assert len(t) == 1  # admitted together
    assert r.xrange(rk.res_key("b3"))[-1][1][b"code"] == b"CANCELLED"
    assert int(r.get(rk.load_key("w"))) == 3
    # The first step reaches every running request's stream.
    loop._publish(engine.step())
    for rid in ("b1", "b2", "b4"):
        rec = r.xrange(rk.res_key(rid))
        assert len(rec) == 1 and pb.StepUpdate.FromString(rec[0][1][b"p"]).step == 1
    loop.pub.close()
