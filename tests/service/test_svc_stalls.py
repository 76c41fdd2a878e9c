"""Faults a watchdog and a careful drain must survive, with real processes: a request that
freezes its worker's step (the stall hook), and SIGTERM while a burst is being dispatched."""

from __future__ import annotations

import signal
from pathlib import Path

import grpc
from svc_util import LONG, SHORT, Stream, check_unbroken, wait_for

from dllmserve.broker import redis_keys as rk
from dllmserve.client import Client

WATCHDOG = ("--stall-floor", "2", "--stall-factor", "10")
WAIT = ("--worker-wait", "120")  # the requests wait while no worker is ready for a while


def _stall_env(seconds: float) -> dict:
    return {"DLLMSERVE_FAULT_STALL_ON_TEXT": "STALL", "DLLMSERVE_FAULT_STALL_S": str(seconds)}


def _log(p) -> str:
    return Path(p.log_path).read_text(errors="replace")


def test_stalled_worker_is_taken_out_and_its_requests_finish_elsewhere(make_cluster):
    c = make_cluster()
    c.add_scheduler("--cancel-wait", "1", *WAIT)
    # a floor well past the Cancel's wait below: the cancel is answered before the reclaim
    frozen = c.add_worker("--stall-floor", "8", env=_stall_env(3600))
    normal = [Stream(c.target, f"n{i}", LONG, prompt=f"normal {i}") for i in range(3)]
    for s in normal:
        s.start()
    wait_for(lambda: all(s.steps() for s in normal), what="the normal requests running")
    stall = Stream(c.target, "stall-1", SHORT, prompt="this one will STALL the step")
    stall.start()
    wait_for(lambda: c.req("stall-1").get("status") == rk.RUNNING, what="the stall admitted")
    # Cancel of a request on the frozen worker: not confirmed in time, so the answer says so;
    # the request still ends cancelled once it is taken back (not re-run as a new attempt).
    with Client(c.target) as cl:
        assert cl.cancel("n2") == "cancelling"
    wait_for(lambda: "stalled" in _log(frozen), 60, what="the watchdog")
    wait_for(lambda: c.req("n0")["status"] == rk.QUEUED, 30, what="work taken back")
    healthy = c.add_worker()  # no stall hook
    for s in [*normal[:2], stall]:
        s.join(240)
        check_unbroken(s, 256 if s is not stall else 16)
        done = s.completed()
        assert done.attempt == 2 and done.worker_id == healthy.worker_id
    normal[2].join(60)
    assert normal[2].error is not None and normal[2].error.code() == grpc.StatusCode.CANCELLED
    assert c.req("n2")["status"] == rk.CANCELLED
    assert frozen.poll() is None, "the frozen worker is out of service, not dead"
    assert not c.client.exists(rk.worker_key(frozen.worker_id))
    assert c.client.xlen(rk.DEAD) == 0
    with Client(c.target) as cl:
        assert [w.worker_id for w in cl.server_info().workers] == [healthy.worker_id]


def test_a_request_that_stalls_every_worker_is_dead_lettered(make_cluster):
    c = make_cluster()
    c.add_scheduler("--max-attempts", "2", *WAIT)
    env = _stall_env(6)  # each stall ends: the worker comes back under a fresh id
    w1 = c.add_worker(*WATCHDOG, env=env, wait=False)
    w2 = c.add_worker(*WATCHDOG, env=env, wait=False)
    c.wait_worker(w1)
    c.wait_worker(w2)
    s = Stream(c.target, "poison-stall", SHORT, prompt="STALL again and again")
    s.start()
    s.join(240)
    assert s.error is not None and s.error.code() == grpc.StatusCode.ABORTED
    assert "dead-letter" in s.error.details()
    (entry,) = c.client.xrange(rk.DEAD)
    assert rk.text(entry[1][b"id"]) == "poison-stall" and rk.text(entry[1][b"attempts"]) == "2"
    # Both workers stalled once, came back and serve again (stall hook re-armed only by STALL).
    wait_for(lambda: all("rejoins as" in _log(w) for w in (w1, w2)), 60, what="both rejoined")
    with Client(c.target) as cl:
        wait_for(lambda: len(cl.server_info().workers) == 2, 30, what="two live workers")
        assert len(cl.generate_text("fine", sampling_params=SHORT, timeout=120).token_ids) == 16


def test_sigterm_while_a_burst_is_dispatched_loses_nothing(make_cluster):
    c = make_cluster()
    c.add_scheduler()
    w1 = c.add_worker("--slots", "6", wait=False)
    w2 = c.add_worker("--slots", "6", wait=False)
    c.wait_worker(w1)
    c.wait_worker(w2)
    sp = {"gen_length": 32, "steps": 16, "seed": 5, "stop_at_eos": False}
    first = [Stream(c.target, f"b{i}", sp, prompt=f"burst {i}") for i in range(24)]
    for s in first:
        s.start()
    wait_for(lambda: int(c.client.get(rk.load_key(w1.worker_id)) or 0) > 0, what="w1 taking work")
    w1.send_signal(signal.SIGTERM)  # while the dispatcher still hands it batches
    second = [Stream(c.target, f"c{i}", sp, prompt=f"burst {i}") for i in range(24)]
    for s in second:
        s.start()
    assert w1.wait(240) == 0
    for s in [*first, *second]:
        s.join(240)
        check_unbroken(s, 32)
    lost = [s.args[1] for s in [*first, *second] if s.completed() is None]
    assert lost == []
    assert not c.client.sismember(rk.WORKERS, w1.worker_id)
    assert c.client.zcard(rk.ASSIGNED) == 0  # nothing left held by any worker
    # the same prompt and seed give the same tokens whichever worker ran it
    by_prompt: dict[str, list[int]] = {}
    for s in [*first, *second]:
        toks = list(s.completed().token_ids)
        assert by_prompt.setdefault(s.args[3], toks) == toks


def test_a_slow_but_progressing_iteration_is_not_a_stall(tmp_path):
    """The watchdog times an iteration from its last progress (a layer forwarded), so one whose
    every layer is slow (8 layers x 1 s here, past the 3 s floor) runs to its end; a truly stuck
    one is still taken out."""
    from svc_util import Cluster

    import dllmserve

    demo = Path(dllmserve.__file__).parent / "assets" / "tiny-llada"  # 8 layers
    c = Cluster(tmp_path / "cluster", demo)
    try:
        c.add_scheduler(*WAIT)
        env = {"DLLMSERVE_FAULT_SLOW_ON_TEXT": "SLOW", "DLLMSERVE_FAULT_SLOW_LAYER_S": "1",
               **_stall_env(6)}  # fmt: skip
        w = c.add_worker("--stall-floor", "3", "--stall-factor", "10", env=env)
        with Client(c.target) as cl:
            assert cl.generate_text("warm up", sampling_params=SHORT, timeout=120).attempt == 1
            done = cl.generate_text("SLOW down", sampling_params=SHORT, timeout=240)
        assert done.attempt == 1 and done.worker_id == w.worker_id
        assert "the next step is slow" in _log(w) and "stalled" not in _log(w)
        stuck = Stream(c.target, "stuck-1", SHORT, prompt="STALL here")
        stuck.start()
        wait_for(lambda: "stalled" in _log(w), 60, what="the watchdog takes a stuck step out")
    finally:
        c.close()
