"""Readiness with real processes: no ready worker means NOT_SERVING and a bounded wait, not a
hang; a scheduler without Redis says so with few log lines; a taken gRPC port is one line."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from svc_util import SHORT, wait_for

from dllmserve import client as dc
from dllmserve.broker import redis_keys as rk
from dllmserve.client import Client
from dllmserve.scheduler.local_redis import free_port


def health(target: str, service: str = "") -> str:
    with grpc.insecure_channel(target) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def test_no_ready_worker_is_not_serving_and_requests_fail_after_the_wait(make_cluster):
    c = make_cluster()
    c.add_scheduler("--worker-wait", "2")
    wait_for(lambda: health(c.target) == "NOT_SERVING", what="NOT_SERVING without workers")
    assert health(c.target, "dllmserve.v1.DllmService") == "NOT_SERVING"
    assert health(c.target, "liveness") == "SERVING"  # alive: a liveness probe must not kill it
    # the container probe (docker-compose's healthcheck) asks either
    probe = [sys.executable, "-m", "dllmserve.scheduler.healthcheck", c.target]
    assert subprocess.run(probe, capture_output=True).returncode == 1
    assert subprocess.run([*probe, "liveness"], capture_output=True).returncode == 0
    with Client(c.target) as cl, pytest.raises(dc.Unavailable) as e:
        cl.generate_text("anyone?", request_id="alone", sampling_params=SHORT, reattach=False,
                         timeout=120)  # fmt: skip
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "no ready worker serves model" in e.value.details()
    assert c.req("alone")["status"] == rk.FAILED and c.client.xlen(rk.PENDING) == 0
    log = Path(c.schedulers[0][0].log_path).read_text()
    assert "no ready worker serves it" in log
    c.add_worker()
    wait_for(lambda: health(c.target) == "SERVING", what="SERVING once a worker is ready")
    with Client(c.target) as cl:
        assert len(cl.generate_text("now", sampling_params=SHORT, timeout=120).token_ids) == 16


def _scheduler(redis_url: str, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "dllmserve.cli", "scheduler", "--redis-url", redis_url,
           "--listen", f"127.0.0.1:{port}", "--metrics-port", "0"]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_taken_grpc_port_is_one_line(make_cluster):
    c = make_cluster()
    port = c.add_scheduler()
    second = _scheduler(c.url, port)  # the same port as the running scheduler
    _out, err = second.communicate(timeout=120)
    assert second.returncode != 0
    assert err.strip().splitlines() == [
        f"dllmserve scheduler: --listen 127.0.0.1:{port}: cannot listen (Address already in use)"
    ]
    other = socket.socket()  # another program holds the port
    other.bind(("127.0.0.1", 0))
    other.listen()
    with other:
        third = _scheduler(c.url, other.getsockname()[1])
        _out, err = third.communicate(timeout=120)
    assert third.returncode != 0 and len(err.strip().splitlines()) == 1, err
    assert "cannot listen" in err


def test_a_scheduler_without_redis_backs_off_and_is_not_serving(tmp_path):
    port = free_port()
    p = _scheduler(f"redis://127.0.0.1:{free_port()}/0", port)  # nothing listens there
    try:
        target = f"127.0.0.1:{port}"
        wait_for(lambda: _answers(target), 120, what="the scheduler up")
        wait_for(lambda: health(target) == "NOT_SERVING", what="NOT_SERVING without Redis")
        time.sleep(8)  # twice a second, the old retry loop logged ~16 lines by now
    finally:
        p.terminate()
        _out, err = p.communicate(timeout=60)
    lines = [x for x in err.splitlines() if "dispatcher: redis unavailable" in x]
    assert 1 <= len(lines) <= 5, lines
    assert "Traceback" not in err


def _answers(target: str) -> bool:
    try:
        health(target)
        return True
    except grpc.RpcError:
        return False
