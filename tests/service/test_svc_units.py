"""The pieces on their own, against a real redis-server: the Lua state changes, fencing of a
stale attempt, the relay's attempt rule and coalescing, and the worker's canvas rendering."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis
from svc_util import enqueue as _enqueue
from svc_util import lua_assign as _assign
from svc_util import ready as _ready

from dllmserve.scheduler import queue as q
from dllmserve.scheduler.relay import Coalescer, RelayError, ResultHub, follow
from dllmserve.v1 import dllm_pb2 as pb
from dllmserve.worker.render import CanvasRenderer


def test_enqueue_is_idempotent_and_bounded(r):
    sc = q.register_scripts(r)
    assert _enqueue(sc, "a") == (1, "1")
    assert _enqueue(sc, "a") == (0, q.QUEUED)  # the same request again: a duplicate
    assert _enqueue(sc, "a", body=b"other")[0] == -2  # the same id, another request
    assert _enqueue(sc, "b", max_queue=2) == (1, "2")
    assert _enqueue(sc, "c", max_queue=2) == (-1, "2")  # full
    assert r.xlen(q.PENDING) == 2 and not r.exists(q.req_key("c"))


def test_cancel_races_with_dispatch_and_stale_attempts_are_fenced(r):
    sc = q.register_scripts(r)
    for rid in ("x", "y"):
        _enqueue(sc, rid)
    # Cancelled while queued: ends at once; the dispatcher skips it.
    assert q.s(sc.cancel(keys=[q.req_key("x")], args=["x", "CANCELLED", "bye", 0, 60])) == (
        q.CANCELLED
    )
    assert _assign(r, sc, "w1", {"x", "y"}) == ["y"]
    assert int(r.get(q.load_key("w1"))) == 1
    got = sc.start(keys=[q.req_key("y"), q.load_key("w1")], args=["w1", time.time(), 60, "y"])
    assert q.s(got[0]) == "1"
    # w1 dies; the request is retried as attempt 2 on w2.
    assert q.s(sc.reclaim(keys=[q.req_key("y"), q.PENDING],
                          args=["w1", 3, time.time(), 60, "y", "1"])) == "requeued"  # fmt: skip
    assert r.hget(q.req_key("y"), "attempt") == b"2"
    assert _assign(r, sc, "w2", {"y"}) == ["y"]
    sc.start(keys=[q.req_key("y"), q.load_key("w2")], args=["w2", time.time(), 60, "y"])
    # The zombie w1 may not finish attempt 1; w2 finishes attempt 2.
    fin = [q.DONE, time.time(), 60, "k", q.REC_COMPLETED, "p", b""]
    keys = [q.req_key("y"), q.res_key("y")]
    assert sc.finish(keys=keys + [q.load_key("w1")], args=["w1", "1", *fin]) == 0
    assert sc.finish(keys=keys + [q.load_key("w2")], args=["w2", "2", *fin]) == 1
    assert r.hget(q.req_key("y"), "status") == b"done" and r.get(q.load_key("w2")) == b"0"
    assert r.ttl(q.req_key("y")) > 0 and r.ttl(q.res_key("y")) > 0


def test_reclaim_dead_letters_after_max_attempts(r):
    sc = q.register_scripts(r)
    _enqueue(sc, "p")
    _assign(r, sc, "w1", {"p"})
    sc.start(keys=[q.req_key("p"), q.load_key("w1")], args=["w1", time.time(), 60, "p"])
    out = sc.reclaim(keys=[q.req_key("p"), q.PENDING], args=["w1", 1, time.time(), 60, "p", "1"])
    assert q.s(out) == "dead"
    assert q.s(r.xrange(q.DEAD)[0][1][b"id"]) == "p"
    rec = r.xrange(q.res_key("p"))[-1][1]
    assert rec[b"k"] == b"e" and rec[b"code"] == b"ABORTED"


def _step(step, positions, tokens, attempt=1, delta=""):
    return pb.StepUpdate(step=step, total_steps=4, positions=positions, token_ids=tokens,
                         attempt=attempt, text_delta=delta)  # fmt: skip


def test_relay_follows_the_latest_attempt_and_resumes_after_a_step(rserver, r):
    r.hset(q.req_key("z"), mapping={"status": "running", "attempt": "1"})

    def add(attempt, kind, payload=b"", **extra):
        r.xadd(q.res_key("z"), {"a": attempt, "k": kind, "p": payload, **extra})

    add(1, q.REC_STEP, _step(1, [0], [5]).SerializeToString())
    add(1, q.REC_STEP, _step(2, [1], [6]).SerializeToString())
    add(2, q.REC_STEP, _step(1, [1], [7], attempt=2).SerializeToString())  # a retry began
    add(1, q.REC_STEP, _step(3, [2], [8]).SerializeToString())  # a zombie of attempt 1: dropped
    add(2, q.REC_STEP, _step(2, [0, 2, 3], [1, 2, 3], attempt=2).SerializeToString())
    add(2, q.REC_COMPLETED, pb.Completed(token_ids=[1, 7, 2, 3], attempt=2).SerializeToString())

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
    r.hset(q.req_key("z"), "attempt", "2")
    evs = asyncio.run(collect())
    assert [(e.step.attempt, e.step.step) for e in evs if e.step.step] == [(2, 1), (2, 2)]
    # An error record ends the stream with its code.
    r.xadd(q.res_key("e"), {"a": 1, "k": q.REC_ERROR, "code": "CANCELLED", "msg": "bye"})
    r.hset(q.req_key("e"), "attempt", "1")

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
    assert c.add(_step(1, [0], [5], delta="a"), False) is None
    merged = c.add(_step(2, [3], [6], delta="b"), False)
    assert list(merged.positions) == [0, 3] and list(merged.token_ids) == [5, 6]
    assert merged.step == 2 and merged.text_delta == "ab"
    assert c.add(_step(3, [1], [7]), False) is None
    assert c.flush().step == 3 and c.flush() is None
    b = Coalescer(pb.StreamOptions(mode=pb.STREAM_MODE_BLOCKS))
    assert b.add(_step(1, [0], [5]), False) is None
    assert list(b.add(_step(2, [1], [6]), True).positions) == [0, 1]
    f = Coalescer(pb.StreamOptions(mode=pb.STREAM_MODE_FINAL_ONLY))
    assert f.add(_step(1, [0], [5]), True) is None and f.flush() is None


def test_canvas_renderer_shows_masks_with_the_placeholder():
    e_acute = list("é".encode())  # two bytes: decoded together once both are committed
    r = CanvasRenderer(lambda ids: bytes(ids).decode("utf-8", errors="replace"), 6, "?")
    assert r.apply([1], [ord("b")]) == "?b????"
    assert r.apply([0, 2, 3], [ord("a"), *e_acute]) == "abé??"
    assert r.apply([5, 4], [ord("z"), ord("!")]) == "abé!z"


def test_dispatcher_batches_by_sparse_config_model_and_capacity(rserver, r):
    """One dispatcher pass over a real Redis: batches hold one SparseConfig each, go only to
    workers of the requested model, never beyond a worker's free slots, highest priority first."""
    from dllmserve.scheduler.dispatcher import Dispatcher
    from dllmserve.scheduler.validation import group_key
    from dllmserve.sparse.state import SparseConfig

    sc = q.register_scripts(r)
    dense, sparse = group_key("m", None), group_key("m", SparseConfig(retention_ratio=0.25))
    plan = [("d1", dense, 0), ("s1", sparse, 0), ("d2", dense, 0), ("s2", sparse, 5),
            ("d3", dense, 0), ("o1", group_key("other", None), 0)]  # fmt: skip
    for rid, g, prio in plan:
        model = "other" if rid == "o1" else "m"
        _enqueue(sc, rid, rid.encode(), 100, g, prio, model)
    for wid, slots in (("wa", 3), ("wb", 2)):
        _ready(r, wid, slots)
        r.sadd(q.WORKERS, wid)

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
        batches[wid] = [q.s(f[b"ids"]).split(",") for _, f in r.xrange(q.inbox_key(wid))]
    # The sparse group holds the highest-priority request, so it goes first, to the worker
    # with the most free slots (wa: 3); the dense group then fills the most free first (wb: 2).
    assert batches["wa"] == [["s2", "s1"], ["d3"]]
    assert batches["wb"] == [["d1", "d2"]]
    assert int(r.get(q.load_key("wa"))) == 3 and int(r.get(q.load_key("wb"))) == 2
    # No worker serves "other": it waits in the queue; the others left the pending stream.
    assert r.hget(q.req_key("o1"), "status") == b"queued"
    assert [q.s(f[b"id"]) for _, f in r.xrange(q.PENDING)] == ["o1"]
    assert r.get(q.LEASE) == b"sched-test"


def _dispatch_once(url: str, max_batch: int = 32) -> None:
    from dllmserve.scheduler.dispatcher import Dispatcher, DispatcherConfig

    async def one_pass():
        client = aioredis.Redis.from_url(url)
        try:
            d = Dispatcher(client, "sched-test", DispatcherConfig(max_batch=max_batch))
            await d._tick()
            assert d.is_leader
        finally:
            await client.aclose()

    asyncio.run(one_pass())


def test_dispatcher_shares_a_burst_evenly_over_idle_workers(rserver, r):
    """A burst of one group over two idle workers: each gets half (not max_batch to the first
    and the rest to the second), in batches of at most max_batch; later requests even out the
    loads again."""
    from dllmserve.scheduler.validation import group_key

    sc = q.register_scripts(r)
    g = group_key("m", None)

    def enqueue(rids):
        for rid in rids:
            _enqueue(sc, rid, rid.encode(), 1000, g)

    for wid in ("wa", "wb"):
        _ready(r, wid, 128)
        r.sadd(q.WORKERS, wid)

    def batches(wid):
        return [q.s(f[b"ids"]).split(",") for _, f in r.xrange(q.inbox_key(wid))]

    burst = [f"r{i:02d}" for i in range(40)]
    enqueue(burst)
    _dispatch_once(rserver.url, max_batch=8)
    got = {w: [rid for b in batches(w) for rid in b] for w in ("wa", "wb")}
    assert [len(b) for b in batches("wa")] == [8, 8, 4] == [len(b) for b in batches("wb")]
    assert sorted(got["wa"] + got["wb"]) == burst  # each request handed out exactly once
    assert got["wa"] == burst[0::2] and got["wb"] == burst[1::2]  # in priority (age) order
    assert int(r.get(q.load_key("wa"))) == 20 == int(r.get(q.load_key("wb")))
    assert r.xlen(q.PENDING) == 0

    # wa finished 10 of its requests: the next 20 first fill wa up to wb's load, then alternate.
    r.set(q.load_key("wa"), 10)
    enqueue([f"s{i:02d}" for i in range(20)])
    _dispatch_once(rserver.url)
    assert [len(b) for b in batches("wa")] == [8, 8, 4, 15]
    assert [len(b) for b in batches("wb")] == [8, 8, 4, 5]
    assert int(r.get(q.load_key("wa"))) == 25 == int(r.get(q.load_key("wb")))


def test_reclaim_of_unstarted_and_handed_back_work(r):
    """A batch the worker never started goes back as it was; a running request handed back by
    a draining worker runs again as a new attempt without counting towards the dead letter."""
    sc = q.register_scripts(r)
    for rid in ("u", "h"):
        _enqueue(sc, rid)
    assert _assign(r, sc, "w1", {"u", "h"}) == ["u", "h"]
    sc.start(keys=[q.req_key("h"), q.load_key("w1")], args=["w1", time.time(), 60, "h"])
    args = ["w1", 1, time.time(), 60]  # max_attempts = 1: a counted retry would dead-letter
    assert q.s(sc.reclaim(keys=[q.req_key("u"), q.PENDING], args=[*args, "u", "1"])) == "requeued"
    assert r.hget(q.req_key("u"), "attempt") == b"1"  # never started: same attempt
    assert q.s(sc.reclaim(keys=[q.req_key("h"), q.PENDING], args=[*args, "h", "0"])) == "requeued"
    assert r.hget(q.req_key("h"), "attempt") == b"2"  # its records of attempt 1 become stale
    assert {q.s(f[b"id"]) for _, f in r.xrange(q.PENDING)} == {"u", "h"}
    assert r.hget(q.req_key("h"), "status") == b"queued" and r.xlen(q.DEAD) == 0
    # A reclaim by a worker that no longer owns the request changes nothing.
    assert q.s(sc.reclaim(keys=[q.req_key("h"), q.PENDING], args=[*args, "h", "1"])) == "skip"


def test_suspects_run_isolated_and_only_a_lone_crash_is_charged(r):
    """The assign script keeps a worker holding suspects of one tag free of other work (and a
    busy worker free of suspects); reclaim charges only a request that ran alone."""
    from dllmserve.scheduler import isolation

    sc = q.register_scripts(r)
    for rid in ("s1", "s2", "n1", "n2", "u1"):
        _enqueue(sc, rid)
    assert _assign(r, sc, "w1", {"s1"}, tag="T") == ["s1"]  # an idle worker takes suspects
    assert _assign(r, sc, "w1", {"n1"}) is None  # nothing else while it holds them
    assert _assign(r, sc, "w1", {"u1"}, tag="U") is None  # nor another tag's suspects
    assert _assign(r, sc, "w1", {"s2"}, tag="T") == ["s2"]  # the rest of its own tag
    assert _assign(r, sc, "w2", {"n2"}) == ["n2"]
    assert _assign(r, sc, "w2", {"u1"}, tag="U") is None  # a busy worker takes no suspects
    for rid, w in (("s1", "w1"), ("s2", "w1")):
        sc.start(keys=[q.req_key(rid), q.load_key(w)], args=[w, time.time(), 60, rid])
    # w1 dies running two: each becomes a suspect of its own half, uncharged
    plan = isolation.verdicts(["s1", "s2"])
    assert {v.charge for v in plan.values()} == {isolation.SUSPECT}
    assert plan["s1"].tag != plan["s2"].tag
    for rid, v in plan.items():
        args = ["w1", 2, time.time(), 60, rid, v.charge, v.tag]
        assert sc.reclaim(keys=[q.req_key(rid), q.PENDING], args=args) == b"requeued"
        assert r.hget(q.req_key(rid), "iso") == v.tag.encode()
        assert r.hget(q.req_key(rid), "crashes") is None
    # alone, it is charged; at max_attempts (2) crashes it is dead-lettered
    for n, (w, expect) in enumerate([("w3", b"requeued"), ("w4", b"dead")], start=1):
        (v,) = isolation.verdicts(["s1"]).values()
        assert v.charge == isolation.CHARGED
        assert _assign(r, sc, w, {"s1"}, tag=v.tag) == ["s1"]
        sc.start(keys=[q.req_key("s1"), q.load_key(w)], args=[w, time.time(), 60, "s1"])
        args = [w, 2, time.time(), 60, "s1", v.charge, v.tag]
        assert sc.reclaim(keys=[q.req_key("s1"), q.PENDING], args=args) == expect
        assert r.hget(q.req_key("s1"), "crashes") == str(n).encode()
    assert [q.s(f[b"id"]) for _, f in r.xrange(q.DEAD)] == ["s1"]


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
