"""Faults with real processes: kill -9 a worker, kill a scheduler, restart Redis, poison."""

from __future__ import annotations

import signal

import grpc
import pytest
from svc_util import LONG, SHORT, Stream, check_unbroken, wait_for

from dllmserve.broker import redis_keys as rk
from dllmserve.client import Client


def _health(target: str) -> str:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        resp = stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def test_kill_9_worker_mid_generation(make_cluster):
    c = make_cluster()
    c.add_scheduler()
    w1, w2 = c.add_worker(wait=False), c.add_worker(wait=False)
    c.wait_worker(w1)
    c.wait_worker(w2)
    streams = [Stream(c.target, f"k{i}", LONG, prompt=f"kill {i}") for i in range(4)]
    for s in streams:
        s.start()
    wait_for(lambda: all(s.steps() for s in streams), what="every request running")
    owners = {s.args[1]: c.req(s.args[1])["worker"] for s in streams}
    victim = w1 if list(owners.values()).count(w1.worker_id) >= 2 else w2
    survivor = w2 if victim is w1 else w1
    c.kill(victim, signal.SIGKILL)
    for s in streams:
        s.join(240)
        check_unbroken(s, 256)
    moved = [s for s in streams if owners[s.args[1]] == victim.worker_id]
    assert moved, "the killed worker ran some of the requests"
    for s in moved:
        done = s.completed()
        assert done.attempt == 2 and done.worker_id == survivor.worker_id
        assert {st.attempt for st in s.steps()} == {1, 2}
    # Same seed, same prompt: the re-run gives what an undisturbed run gives.
    with Client(c.target) as cl:
        ref = cl.generate_text(moved[0].args[3], sampling_params=LONG, sparse_config={})
    assert list(ref.token_ids) == list(moved[0].completed().token_ids)
    assert not c.client.exists(rk.inbox_key(victim.worker_id))
    assert not c.client.sismember(rk.WORKERS, victim.worker_id)


def test_kill_scheduler_clients_reattach_through_another(make_cluster):
    c = make_cluster()
    port_a = c.add_scheduler()
    port_b = c.add_scheduler()
    c.add_worker()
    targets = [f"127.0.0.1:{port_a}", f"127.0.0.1:{port_b}"]
    streams = [Stream(targets, f"s{i}", LONG, prompt=f"sched {i}") for i in range(3)]
    for s in streams:
        s.start()
    wait_for(lambda: all(len(s.steps()) >= 2 for s in streams), what="streams flowing")
    c.kill(c.schedulers[0][0], signal.SIGKILL)
    for s in streams:
        s.join(240)
        check_unbroken(s, 256)
        assert {st.attempt for st in s.steps()} == {1}
    # The surviving replica took the dispatcher lease and serves new requests.
    with Client(targets[1]) as cl:
        assert len(cl.generate_text("after", sampling_params=SHORT).token_ids) == 16
        assert cl.server_info().dispatcher_leader


def test_redis_restart_keeps_queued_requests(make_cluster):
    c = make_cluster()
    c.add_scheduler("--worker-wait", "600")  # the requests wait for the worker added last
    streams = [Stream(c.target, f"r{i}", SHORT, prompt=f"persist {i}") for i in range(3)]
    for s in streams:
        s.start()
    wait_for(lambda: c.client.xlen(rk.PENDING) == 3, what="three queued")
    c.client.close()
    c.redis.stop()  # SIGTERM: Redis flushes its AOF and exits
    wait_for(lambda: _health(c.target) == "NOT_SERVING", what="health follows Redis down")
    with Client(c.target) as cl:  # new work is refused with a status the client may retry
        with pytest.raises(grpc.RpcError) as e:
            cl.generate_text("while down", sampling_params=SHORT, reattach=False, timeout=60)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    c.redis.start()  # same port, same directory: replays the AOF
    import redis

    c.client = redis.Redis.from_url(c.url)
    assert c.client.xlen(rk.PENDING) == 3
    assert all(c.req(f"r{i}")["status"] == rk.QUEUED for i in range(3))
    assert _health(c.target) == "NOT_SERVING"  # Redis is back, but no worker is ready
    c.add_worker()
    wait_for(lambda: _health(c.target) == "SERVING", what="health follows Redis and a worker up")
    for s in streams:
        s.join(240)
        check_unbroken(s, 16)


def test_poison_request_is_dead_lettered_and_aborted(make_cluster):
    c = make_cluster()
    c.add_scheduler("--max-attempts", "2")
    env = {"DLLMSERVE_FAULT_CRASH_ON_TEXT": "POISON"}
    w1, w2 = c.add_worker(env=env, wait=False), c.add_worker(env=env, wait=False)
    c.wait_worker(w1)
    c.wait_worker(w2)
    s = Stream(c.target, "poison-1", SHORT, prompt="this is POISON")
    s.start()
    s.join(240)
    assert s.error is not None and s.error.code() == grpc.StatusCode.ABORTED
    assert "dead-letter" in s.error.details()
    wait_for(lambda: w1.poll() is not None and w2.poll() is not None, what="both crashed")
    (entry,) = c.client.xrange(rk.DEAD)
    fields = {rk.text(k): rk.text(v) for k, v in entry[1].items()}
    assert fields["id"] == "poison-1" and fields["attempts"] == "2"
    assert c.req("poison-1")["status"] == rk.DEAD_STATUS
    # A healthy worker still serves everything else.
    c.add_worker()
    with Client(c.target) as cl:
        assert len(cl.generate_text("fine", sampling_params=SHORT).token_ids) == 16
        with pytest.raises(grpc.RpcError) as e:  # re-attaching to the poison gives ABORTED again
            list(cl.attach("poison-1"))
        assert e.value.code() == grpc.StatusCode.ABORTED


def test_worker_sigterm_drains_and_hands_back(make_cluster):
    c = make_cluster()
    c.add_scheduler()
    w1 = c.add_worker()
    s = Stream(c.target, "drain-1", LONG, prompt="drain")
    s.start()
    wait_for(lambda: s.steps(), what="running")
    c.kill(w1, signal.SIGTERM)  # drains: finishes what runs, then deregisters
    assert w1.returncode == 0
    s.join(240)
    check_unbroken(s, 256)
    assert not c.client.sismember(rk.WORKERS, w1.worker_id)


def test_scheduler_sigterm_drains_open_streams(make_cluster):
    c = make_cluster()
    port_a = c.add_scheduler("--drain-grace", "120")
    port_b = c.add_scheduler()
    c.add_worker()
    sched_a = c.schedulers[0][0]
    s = Stream(f"127.0.0.1:{port_a}", "drain-s", LONG, prompt="drain sched", reattach=False)
    s.start()
    wait_for(lambda: s.steps(), what="streaming")
    sched_a.send_signal(signal.SIGTERM)
    s.join(240)
    check_unbroken(s, 256)  # the open stream finished on the draining replica
    assert sched_a.wait(60) == 0
    with Client(f"127.0.0.1:{port_b}") as cl:  # the other replica serves (and dispatches)
        assert len(cl.generate_text("after drain", sampling_params=SHORT).token_ids) == 16
        assert cl.server_info().dispatcher_leader
