"""The pieces on their own, against a real redis-server: the Lua state changes, fencing of a
stale attempt, the relay's attempt rule and coalescing, and the worker's canvas rendering."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from svc_util import enqueue as _enqueue
from svc_util import lua_assign as _assign
from svc_util import ready as _ready

from dllmserve.broker import redis_keys as rk
from dllmserve.broker.inbox_entry import decode_all, read_all
from dllmserve.broker.scripts import Broker, Cancel, Completion, Enqueue, Enqueued, Reclaim
from dllmserve.scheduler.relay import Coalescer, RelayError, ResultHub, follow
from dllmserve.v1 import dllm_pb2 as pb
from dllmserve.worker.render import CanvasRenderer


def test_enqueue_is_idempotent_and_bounded(r):
    sc = Broker(r)
    assert _enqueue(sc, "a") == Enqueued(Enqueue.QUEUED, "1")
    # the same request again: a duplicate
    assert _enqueue(sc, "a") == Enqueued(Enqueue.DUPLICATE, rk.QUEUED)
    # the same id, another request
    assert _enqueue(sc, "a", prompt="other") == Enqueued(Enqueue.CONFLICT, rk.QUEUED)
    assert _enqueue(sc, "b", max_queue=2) == Enqueued(Enqueue.QUEUED, "2")
    assert _enqueue(sc, "c", max_queue=2) == Enqueued(Enqueue.QUEUE_FULL, "2")
    assert r.xlen(rk.PENDING) == 2 and not r.exists(rk.req_key("c"))


def test_cancel_races_with_dispatch_and_stale_attempts_are_fenced(r):
    sc = Broker(r)
    for rid in ("x", "y"):
        _enqueue(sc, rid)
    # Cancelled while queued: ends at once; the dispatcher skips it.
    assert sc.cancel("x", code="CANCELLED", msg="bye", ttl_s=60) is Cancel.CANCELLED
    assert _assign(r, sc, "w1", {"x", "y"}) == ["y"]
    assert int(r.get(rk.load_key("w1"))) == 1
    got = sc.start("y", worker="w1", ttl_s=60)
    assert got is not None and got.attempt == 1 and got.admission.prompt == "body"
    assert sc.start("y", worker="w1", ttl_s=60) is None  # running already
    # w1 dies; the request is retried as attempt 2 on w2.
    got = sc.reclaim("y", worker="w1", max_attempts=3, ttl_s=60, charge="1")
    assert got is Reclaim.REQUEUED
    assert r.hget(rk.req_key("y"), "attempt") == b"2"
    assert _assign(r, sc, "w2", {"y"}) == ["y"]
    sc.start("y", worker="w2", ttl_s=60)
    # The zombie w1 may not finish attempt 1; w2 finishes attempt 2.
    fin = dict(status=rk.DONE, ttl_s=60, final=Completion(b""))
    assert sc.finish("y", worker="w1", attempt=1, **fin) is False
    assert sc.finish("y", worker="w2", attempt=2, **fin) is True
    assert r.hget(rk.req_key("y"), "status") == b"done" and r.get(rk.load_key("w2")) == b"0"
    assert r.ttl(rk.req_key("y")) > 0 and r.ttl(rk.res_key("y")) > 0


def test_reclaim_dead_letters_after_max_attempts(r):
    sc = Broker(r)
    _enqueue(sc, "p")
    _assign(r, sc, "w1", {"p"})
    sc.start("p", worker="w1", ttl_s=60)
    assert sc.reclaim("p", worker="w1", max_attempts=1, ttl_s=60, charge="1") is Reclaim.DEAD
    assert rk.text(r.xrange(rk.DEAD)[0][1][b"id"]) == "p"
    rec = r.xrange(rk.res_key("p"))[-1][1]
    assert rec[b"k"] == b"e" and rec[b"code"] == b"ABORTED"


def _step(step, positions, tokens, attempt=1, delta="", block_done=False):
    return pb.StepUpdate(step=step, total_steps=4, positions=positions, token_ids=tokens,
                         attempt=attempt, text_delta=delta, block_done=block_done)  # fmt: skip


def test_relay_follows_the_latest_attempt_and_resumes_after_a_step(rserver, r):
    r.hset(rk.req_key("z"), mapping={"status": "running", "attempt": "1"})

    def add(attempt, kind, payload=b"", **extra):
        r.xadd(rk.res_key("z"), {"a": attempt, "k": kind, "p": payload, **extra})

    add(1, rk.REC_STEP, _step(1, [0], [5]).SerializeToString())
    add(1, rk.REC_STEP, _step(2, [1], [6]).SerializeToString())
    add(2, rk.REC_STEP, _step(1, [1], [7], attempt=2).SerializeToString())  # a retry began
    add(1, rk.REC_STEP, _step(3, [2], [8]).SerializeToString())  # a zombie of attempt 1: dropped
    add(2, rk.REC_STEP, _step(2, [0, 2, 3], [1, 2, 3], attempt=2).SerializeToString())
    add(2, rk.REC_COMPLETED, pb.Completed(token_ids=[1, 7, 2, 3], attempt=2).SerializeToString())

    async def collect(after_step=0, attempt=0, opts=None):
        client = aioredis.Redis.from_url(rserver.url)
        hub = ResultHub(client, block_ms=50)
        task = asyncio.create_task(hub.run())
        try:
            return [ev async for ev in follow(hub, client, "z", opts or pb.StreamOptions(),
                                              after_step, attempt)]  # fmt: skip
        finally:
            task.cancel()
            await client.aclose()

    evs = asyncio.run(collect())
    seen = [(e.step.attempt, e.step.step) for e in evs if e.WhichOneof("event") == "step"]
    assert seen == [(1, 1), (1, 2), (2, 1), (2, 2)]
    # Attach after step 1 of attempt 2: only step 2 is left.
    evs = asyncio.run(collect(after_step=1, attempt=2))
    assert [e.step.step for e in evs if e.WhichOneof("event") == "step"] == [2]
    # Once the request is known to be on attempt 2, attempt 1's records are skipped entirely.
    r.hset(rk.req_key("z"), "attempt", "2")
    evs = asyncio.run(collect())
    assert [(e.step.attempt, e.step.step) for e in evs if e.step.step] == [(2, 1), (2, 2)]
    # An error record ends the stream with its code.
    r.xadd(rk.res_key("e"), {"a": 1, "k": rk.REC_ERROR, "code": "CANCELLED", "msg": "bye"})
    r.hset(rk.req_key("e"), "attempt", "1")

    async def err():
        client = aioredis.Redis.from_url(rserver.url)
        hub = ResultHub(client, block_ms=50)
        task = asyncio.create_task(hub.run())
        try:
            async for _ in follow(hub, client, "e", pb.StreamOptions()):
                pass
        finally:
            task.cancel()
            await client.aclose()

    with pytest.raises(RelayError) as e:
        asyncio.run(err())
    assert e.value.code == "CANCELLED"


def test_coalescer_merges_in_order():
    c = Coalescer(pb.StreamOptions(mode=pb.STREAM_MODE_EVERY_K_STEPS, every_k=2))
    assert c.add(_step(1, [0], [5], delta="a")) is None
    merged = c.add(_step(2, [3], [6], delta="b"))
    assert list(merged.positions) == [0, 3] and list(merged.token_ids) == [5, 6]
    assert merged.step == 2 and merged.text_delta == "ab"
    assert c.add(_step(3, [1], [7])) is None
    assert c.flush().step == 3 and c.flush() is None
    b = Coalescer(pb.StreamOptions(mode=pb.STREAM_MODE_BLOCKS))  # the step's own block_done
    assert b.add(_step(1, [0], [5])) is None
    merged = b.add(_step(2, [1], [6], block_done=True))
    assert list(merged.positions) == [0, 1] and merged.block_done
    f = Coalescer(pb.StreamOptions(mode=pb.STREAM_MODE_FINAL_ONLY))
    assert f.add(_step(1, [0], [5], block_done=True)) is None and f.flush() is None


def test_canvas_renderer_shows_masks_with_the_placeholder():
    e_acute = list("é".encode())  # two bytes: decoded together once both are committed
    r = CanvasRenderer(lambda ids: bytes(ids).decode("utf-8", errors="replace"), 6, "?")
    assert r.apply([1], [ord("b")]) == "?b????"
    assert r.apply([0, 2, 3], [ord("a"), *e_acute]) == "abé??"
    assert r.apply([5, 4], [ord("z"), ord("!")]) == "abé!z"


def test_dispatcher_batches_by_model_priority_and_capacity(rserver, r):
    """One dispatcher pass over a real Redis: batches go only to workers of the requested
    model, never beyond a worker's free slots, highest priority first, then oldest (requests
    of any sparse or sampling settings share a batch: the engine mixes them)."""
    from dllmserve.scheduler.dispatcher import Dispatcher

    sc = Broker(r)
    plan = [("d1", 0), ("s1", 0), ("d2", 0), ("s2", 5), ("d3", 0), ("o1", 0)]
    for rid, prio in plan:
        model = "other" if rid == "o1" else "m"
        _enqueue(sc, rid, rid, 100, prio, model)
    for wid, slots in (("wa", 3), ("wb", 2)):
        _ready(r, wid, slots)
        r.sadd(rk.WORKERS, wid)

    async def one_pass():
        client = aioredis.Redis.from_url(rserver.url)
        d = Dispatcher(client, "sched-test")
        try:
            await d._tick()
            return d.is_leader
        finally:
            await client.aclose()

    assert asyncio.run(one_pass())
    batches = {}
    for wid in ("wa", "wb"):
        batches[wid] = [list(e.request_ids) for e in decode_all(read_all(r, wid))]
    # s2 (priority 5) first, then by age (d1 s1 d2 d3); each request to the worker with the
    # most free slots at that point (wa: 3, wb: 2), a tie to the one already taking part.
    assert batches["wa"] == [["s2", "d1", "d2"]]
    assert batches["wb"] == [["s1", "d3"]]
    assert int(r.get(rk.load_key("wa"))) == 3 and int(r.get(rk.load_key("wb"))) == 2
    # No worker serves "other": it waits in the queue; the others left the pending stream.
    assert r.hget(rk.req_key("o1"), "status") == b"queued"
    assert [rk.text(f[b"id"]) for _, f in r.xrange(rk.PENDING)] == ["o1"]
    assert r.get(rk.LEASE) == b"sched-test"


def _dispatch_once(url: str, max_batch: int = 32) -> None:
    from dllmserve.scheduler.config import SchedulerConfig
    from dllmserve.scheduler.dispatcher import Dispatcher

    async def one_pass():
        client = aioredis.Redis.from_url(url)
        try:
            d = Dispatcher(client, "sched-test", SchedulerConfig(max_batch=max_batch))
            await d._tick()
            assert d.is_leader
        finally:
            await client.aclose()

    asyncio.run(one_pass())


def test_dispatcher_shares_a_burst_evenly_over_idle_workers(rserver, r):
    """A burst of one model's requests over two idle workers: each gets half (not max_batch to
    the first and the rest to the second), in batches of at most max_batch; later requests even
    out the loads again."""
    sc = Broker(r)

    def enqueue(rids):
        for rid in rids:
            _enqueue(sc, rid, rid, 1000)

    for wid in ("wa", "wb"):
        _ready(r, wid, 128)
        r.sadd(rk.WORKERS, wid)

    def batches(wid):
        return [list(e.request_ids) for e in decode_all(read_all(r, wid))]

    burst = [f"r{i:02d}" for i in range(40)]
    enqueue(burst)
    _dispatch_once(rserver.url, max_batch=8)
    got = {w: [rid for b in batches(w) for rid in b] for w in ("wa", "wb")}
    assert [len(b) for b in batches("wa")] == [8, 8, 4] == [len(b) for b in batches("wb")]
    assert sorted(got["wa"] + got["wb"]) == burst  # each request handed out exactly once
    assert got["wa"] == burst[0::2] and got["wb"] == burst[1::2]  # in priority (age) order
    assert int(r.get(rk.load_key("wa"))) == 20 == int(r.get(rk.load_key("wb")))
    assert r.xlen(rk.PENDING) == 0

    # wa finished 10 of its requests: the next 20 first fill wa up to wb's load, then alternate.
    r.set(rk.load_key("wa"), 10)
    enqueue([f"s{i:02d}" for i in range(20)])
    _dispatch_once(rserver.url)
    assert [len(b) for b in batches("wa")] == [8, 8, 4, 15]
    assert [len(b) for b in batches("wb")] == [8, 8, 4, 5]
    assert int(r.get(rk.load_key("wa"))) == 25 == int(r.get(rk.load_key("wb")))


def test_reclaim_of_unstarted_and_handed_back_work(r):
    """A batch the worker never started goes back as it was; a running request handed back by
    a draining worker runs again as a new attempt without counting towards the dead letter."""
    sc = Broker(r)
    for rid in ("u", "h"):
        _enqueue(sc, rid)
    assert _assign(r, sc, "w1", {"u", "h"}) == ["u", "h"]
    sc.start("h", worker="w1", ttl_s=60)
    args = dict(worker="w1", max_attempts=1, ttl_s=60)  # 1: a counted retry would dead-letter
    assert sc.reclaim("u", **args, charge="1") is Reclaim.REQUEUED
    assert r.hget(rk.req_key("u"), "attempt") == b"1"  # never started: same attempt
    assert sc.reclaim("h", **args, charge="0") is Reclaim.REQUEUED
    assert r.hget(rk.req_key("h"), "attempt") == b"2"  # its records of attempt 1 become stale
    assert {rk.text(f[b"id"]) for _, f in r.xrange(rk.PENDING)} == {"u", "h"}
    assert r.hget(rk.req_key("h"), "status") == b"queued" and r.xlen(rk.DEAD) == 0
    # A reclaim by a worker that no longer owns the request changes nothing.
    assert sc.reclaim("h", **args, charge="1") is Reclaim.SKIP


def test_suspects_run_isolated_and_only_a_lone_crash_is_charged(r):
    """The assign script keeps a worker holding suspects of one tag free of other work (and a
    busy worker free of suspects); reclaim charges only a request that ran alone."""
    from dllmserve.scheduler import isolation

    sc = Broker(r)
    for rid in ("s1", "s2", "n1", "n2", "u1"):
        _enqueue(sc, rid)
    assert _assign(r, sc, "w1", {"s1"}, tag="T") == ["s1"]  # an idle worker takes suspects
    assert _assign(r, sc, "w1", {"n1"}) is None  # nothing else while it holds them
    assert _assign(r, sc, "w1", {"u1"}, tag="U") is None  # nor another tag's suspects
    assert _assign(r, sc, "w1", {"s2"}, tag="T") == ["s2"]  # the rest of its own tag
    assert _assign(r, sc, "w2", {"n2"}) == ["n2"]
    assert _assign(r, sc, "w2", {"u1"}, tag="U") is None  # a busy worker takes no suspects
    for rid, w in (("s1", "w1"), ("s2", "w1")):
        sc.start(rid, worker=w, ttl_s=60)
    # w1 dies running two: each becomes a suspect of its own half, uncharged
    plan = isolation.verdicts(["s1", "s2"])
    assert {v.charge for v in plan.values()} == {isolation.SUSPECT}
    assert plan["s1"].tag != plan["s2"].tag
    for rid, v in plan.items():
        got = sc.reclaim(rid, worker="w1", max_attempts=2, ttl_s=60, charge=v.charge, tag=v.tag)
        assert got is Reclaim.REQUEUED
        assert r.hget(rk.req_key(rid), "iso") == v.tag.encode()
        assert r.hget(rk.req_key(rid), "crashes") is None
    # alone, it is charged; at max_attempts (2) crashes it is dead-lettered
    for n, (w, expect) in enumerate([("w3", Reclaim.REQUEUED), ("w4", Reclaim.DEAD)], start=1):
        (v,) = isolation.verdicts(["s1"]).values()
        assert v.charge == isolation.CHARGED
        assert _assign(r, sc, w, {"s1"}, tag=v.tag) == ["s1"]
        sc.start("s1", worker=w, ttl_s=60)
        got = sc.reclaim("s1", worker=w, max_attempts=2, ttl_s=60, charge=v.charge, tag=v.tag)
        assert got is expect
        assert r.hget(rk.req_key("s1"), "crashes") == str(n).encode()
    assert [rk.text(f[b"id"]) for _, f in r.xrange(rk.DEAD)] == ["s1"]


def test_a_suspect_group_reserves_the_least_loaded_worker():
    from dllmserve.scheduler.isolation import Candidate, place

    busy, idle = Candidate("a", "m", free=4, load=4), Candidate("b", "m", free=8, load=0)
    reserved: set[str] = set()
    assert place("T", "m", [busy, idle], reserved) is idle and reserved == {"b"}
    # the next group finds only the busy worker: reserved for it, it waits for it to empty
    assert place("U", "m", [busy, idle], reserved) is None and reserved == {"a", "b"}
    holder = Candidate("c", "m", free=6, load=2, iso="T")  # holds T: takes the rest of T
    assert place("T", "m", [holder, idle], set()) is holder
    assert place("T", "other-model", [holder, idle], set()) is None
