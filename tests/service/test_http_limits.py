"""Slow-loris and connection floods against a real gateway process (in front of a real
scheduler; no worker is needed, so /health may answer 503, but it must answer): half-sent
requests are closed after the header timeout, requests over the connection limit get 503, and
a process out of file descriptors logs its accept errors at a bounded rate."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from http_util import add_gateway
from svc_util import Cluster, wait_for

from dllmserve.scheduler.local_redis import free_port

HALF = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: "  # the headers never end


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tiny_model):
    c = Cluster(tmp_path_factory.mktemp("limits"), tiny_model)
    try:
        c.add_scheduler()
        yield c
    finally:
        c.close()


def half_sent(url: str, n: int) -> list[socket.socket]:
    host, port = url.removeprefix("http://").split(":")
    socks = []
    for _ in range(n):
        s = socket.create_connection((host, int(port)), timeout=60)
        s.sendall(HALF)
        socks.append(s)
    return socks


def closed_by_server(s: socket.socket) -> bool:
    """True once the server closed the connection (recv gives EOF or a reset)."""
    try:
        return s.recv(1024) == b""
    except ConnectionResetError:
        return True


def answers(url: str) -> bool:
    r = httpx.get(url + "/health", timeout=10)
    return r.status_code in (200, 503) and "status" in r.json()


def test_half_sent_requests_are_closed_and_the_limit_answers_503(cluster):
    base = add_gateway(cluster, "--header-timeout", "1", "--max-connections", "3")
    silent = socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=60)
    held = half_sent(base, 2)
    # 3 connections held open: the next one's request is refused, not queued behind them.
    r = httpx.get(base + "/health", timeout=10)
    assert r.status_code == 503
    for s in [silent, *held]:
        assert closed_by_server(s)  # recv blocks until the header deadline closes it
        s.close()
    assert answers(base)


def test_out_of_file_descriptors_logs_a_line_per_interval(cluster, tmp_path):
    """A gateway with a 96-file limit flooded by 150 half-sent requests: accept() fails with
    EMFILE for the rest, logged as one line (not one per refused connection, with a
    traceback each), and it answers again once the header timeout has closed the flood."""
    port = free_port()
    log = tmp_path / "gateway.log"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (96, 96))

    cmd = [sys.executable, "-m", "dllmserve.cli", "gateway", "--target", cluster.target,
           "--listen", f"127.0.0.1:{port}", "--header-timeout", "2"]  # fmt: skip
    with open(log, "wb") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, preexec_fn=limit,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    try:
        wait_for(lambda: "DLLMSERVE_GATEWAY_READY" in log.read_text(), 60, what="gateway")
        base = f"http://127.0.0.1:{port}"
        flood = half_sent(base, 150)
        wait_for(lambda: "cannot accept connections" in log.read_text(), 30, what="accept error")
        time.sleep(1.5)  # the limiter's interval is 10 s: more lines here would be a regression
        for s in flood:
            closed_by_server(s)
            s.close()
        wait_for(lambda: answers(base), 60, 0.5, what="answers again")
        text = Path(log).read_text()
        assert text.count("cannot accept connections") == 1, text[-3000:]
        assert "Traceback" not in text and "out of system resource" not in text
    finally:
        p.kill()
        p.wait(30)


def test_a_body_that_does_not_arrive_is_408(cluster):
    base = add_gateway(cluster, "--body-timeout", "1")
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                  b"\r\nContent-Length: 100\r\n\r\n{")  # fmt: skip
        reply = b""
        while b"}}" not in reply:
            part = s.recv(4096)
            assert part, reply
            reply += part
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert json.loads(body)["error"]["param"] == "body"
