"""The worker loop without a scheduler process: a model-free engine (FakeEngine) and a real
redis-server, requests enqueued and dispatched through the contract's calls as the
dispatcher would. The loop runs them to their final records and acknowledges their batches
(with the publisher thread), drains on stop, drops what the dispatcher took back, and after a
stall serves again under a fresh id."""

from __future__ import annotations

from svc_util import lua_assign

from dllmserve.broker import redis_keys as rk
from dllmserve.broker.admission import Admission
from dllmserve.broker.scripts import Broker, StoredRequest
from dllmserve.sampling_params import SamplingParams
from dllmserve.testing.fake_engine import FakeEngine
from dllmserve.v1 import dllm_pb2 as pb
from dllmserve.worker.config import WorkerConfig
from dllmserve.worker.loop import WorkerLoop

STEPS = 4


def _enqueue(b: Broker, rid: str) -> None:
    adm = Admission([5, 6, 7], SamplingParams(gen_length=STEPS, steps=STEPS), None)
    req = StoredRequest(request_id=rid, admission=adm, model="m", priority=0,
                        deadline=0.0, options=b"", client="ip:c", quota="", last_step=STEPS,
                        ttl_s=60)  # fmt: skip
    b.enqueue(req, max_queue=100)


def _loop(r, wid: str = "w", **cfg) -> tuple[WorkerLoop, FakeEngine]:
    engine = FakeEngine()
    loop = WorkerLoop(engine, r, WorkerConfig(idle_block_ms=1, **cfg), wid)
    loop.ensure_group()
    return loop, engine


def _run_until_idle(loop: WorkerLoop) -> None:
    for _ in range(10 * STEPS):
        loop.iterate()
        if not loop.active and not loop.engine.has_unfinished():
            break
    loop.pub.flush()


def _records(r, rid: str) -> list[str]:
    """The kinds of a request's result records, in order ("s" step, "c" completed, "e" error)."""
    return [rk.text(f[b"k"]) for _eid, f in r.xrange(rk.res_key(rid))]


def _status(r, rid: str) -> str:
    return rk.text(r.hget(rk.req_key(rid), "status"))


def test_the_loop_runs_dispatched_requests_to_their_final_records(r):
    b = Broker(r)
    for rid in ("a", "b", "c"):
        _enqueue(b, rid)
    loop, engine = _loop(r)  # the publisher on its own thread, as in production
    lua_assign(r, b, "w", {"a", "b"})
    lua_assign(r, b, "w", {"c"})
    _run_until_idle(loop)
    for rid in ("a", "b", "c"):
        assert _records(r, rid) == ["s"] * STEPS + ["c"], rid
        assert _status(r, rid) == rk.DONE
        last = r.xrange(rk.res_key(rid))[-1][1]
        done = pb.Completed.FromString(last[b"p"])
        assert (done.request_id, done.worker_id, done.usage.steps) == (rid, "w", STEPS)
    assert engine.added == ["a", "b", "c"]
    assert r.xlen(rk.inbox_key("w")) == 0  # both batches acknowledged and deleted
    assert int(r.get(rk.load_key("w"))) == 0
    assert (loop.snapshot.worker_id, loop.snapshot.stats["active"]) == ("w", 0)
    assert loop.snapshot.steps == loop.steps >= STEPS
    loop.pub.close()


def test_a_stopped_loop_finishes_what_runs_and_hands_back_what_it_never_read(r):
    b = Broker(r)
    for rid in ("run1", "run2", "unread"):
        _enqueue(b, rid)
    loop, engine = _loop(r, async_publish=False)
    lua_assign(r, b, "w", {"run1", "run2"})
    loop.iterate()  # reads that batch and runs its first step
    assert sorted(loop.active) == ["run1", "run2"]
    lua_assign(r, b, "w", {"unread"})
    seen = []
    loop.stop.set()  # SIGTERM
    loop.run(before_leave=lambda: seen.append([_status(r, x) for x in ("run1", "run2")]))
    assert seen == [[rk.DONE, rk.DONE]]  # they finished before the heartbeat stopped
    for rid in ("run1", "run2"):
        assert _records(r, rid) == ["s"] * STEPS + ["c"] and _status(r, rid) == rk.DONE
    assert _status(r, "unread") == rk.QUEUED and "unread" not in engine.added
    assert not r.sismember(rk.WORKERS, "w") and not r.exists(rk.inbox_key("w"))


def test_a_drain_out_of_time_hands_back_what_runs_as_a_new_attempt(r):
    b = Broker(r)
    _enqueue(b, "slow")
    loop, engine = _loop(r, async_publish=False, drain_timeout_s=0.0)
    lua_assign(r, b, "w", {"slow"})
    loop.iterate()
    loop.stop.set()
    loop.run()
    assert _status(r, "slow") == rk.QUEUED and rk.text(r.hget(rk.req_key("slow"), "attempt")) == "2"
    assert not engine.has_unfinished() and not loop.active


def test_a_reaped_loop_drops_its_work_and_leaves_the_batch_to_the_dispatcher(r):
    b = Broker(r)
    _enqueue(b, "x")
    loop, engine = _loop(r)
    lua_assign(r, b, "w", {"x"})
    loop.iterate()
    assert loop.active
    loop.reaped.set()  # the heartbeat found us gone from dllm:workers
    loop.iterate()
    assert not loop.active and not engine.has_unfinished() and not loop.reaped.is_set()
    loop.pub.flush()
    assert len(loop.entries) == 0
    assert r.xlen(rk.inbox_key("w")) == 1  # not acknowledged: the dispatcher takes it back
    loop.pub.close()


def test_after_a_stall_the_loop_serves_again_under_a_fresh_id(r):
    b = Broker(r)
    _enqueue(b, "stalled")
    loop, engine = _loop(r, async_publish=False)
    lua_assign(r, b, "w", {"stalled"})
    real_step = engine.step

    def stalled_step():
        loop.watchdog.tripped.set()  # as the watchdog does while the step hangs
        return real_step()

    engine.step = stalled_step
    loop.iterate()
    engine.step = real_step
    assert loop.id == "w.1" and loop.snapshot.worker_id == "w.1"  # what the heartbeat beats
    assert not loop.active and not engine.has_unfinished()
    assert not loop.watchdog.tripped.is_set()
    assert _records(r, "stalled") == []  # the step that came back published nothing
    _enqueue(b, "next")
    lua_assign(r, b, "w.1", {"next"})
    _run_until_idle(loop)
    assert _records(r, "next") == ["s"] * STEPS + ["c"]
