"""Lost Redis state with real processes: after a FLUSHALL, or a restart of a Redis without
persistence, every open stream ends at once with UNAVAILABLE "request state lost; resubmit"
(docs/service.md, "Lost Redis state"), and the service serves new requests afterwards."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import grpc
import pytest
import redis
from grpc_status import rpc_status
from svc_util import LONG, SHORT, Stream, wait_for

from dllmserve.client import Client
from dllmserve.scheduler.relay import LOST_MESSAGE, LOST_REASON


def _flush(c) -> None:
    c.client.flushall()


def _restart_empty(c) -> None:
    c.client.close()
    c.redis.stop(kill=True)
    c.redis.aof = False
    for p in c.redis.data_dir.iterdir():  # what a restart without persistence finds: nothing
        if p.name.startswith(("appendonly", "dump")):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    c.redis.start()
    c.client = redis.Redis.from_url(c.url)


@pytest.mark.parametrize("lose", [_flush, _restart_empty], ids=["flushall", "restart-empty"])
def test_open_streams_end_at_once_when_redis_loses_its_state(make_cluster, lose):
    c = make_cluster()
    c.add_scheduler()
    c.add_worker()
    streams = [Stream(c.target, f"lost{i}", LONG, prompt=f"lost {i}", reattach=False)
               for i in range(3)]  # fmt: skip
    for s in streams:
        s.start()
    wait_for(lambda: all(s.steps() for s in streams), what="every stream flowing")
    lose(c)
    for s in streams:
        s.join(10)  # the bound
        assert not s.is_alive(), "the stream did not end within 10 s of the loss"
        assert s.error is not None and s.error.code() == grpc.StatusCode.UNAVAILABLE, s.error
        assert s.error.details() == LOST_MESSAGE
        (info,) = rpc_status.from_call(s.error).details
        assert LOST_REASON.encode() in info.value
    assert "redis lost the service's state" in _log(c.schedulers[0][0])
    # The worker drops what it ran, registers again, and the service serves new requests.
    wait_for(lambda: "was reaped; dropping" in _log(c.workers[0]), 30, what="the worker drops")
    with Client(c.target) as cl:
        done = wait_for(lambda: _try(cl), 120, interval_s=1.0, what="serving again")
        assert len(done.token_ids) == 16


def _log(p) -> str:
    return Path(p.log_path).read_text(errors="replace")


def _try(cl):
    try:
        return cl.generate_text("again", sampling_params=SHORT, timeout=60, reattach=False)
    except grpc.RpcError:
        return None


def test_sentinel_urls(rserver, tmp_path):
    """`redis+sentinel://` reaches the master a real Sentinel names; bad ones are one clear
    error naming what is wrong."""
    import subprocess
    from urllib.parse import urlsplit

    from dllmserve.broker.redis_link import connect, parse_sentinel
    from dllmserve.scheduler.local_redis import find_redis_server, free_port

    master = urlsplit(rserver.url)
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                    f"sentinel monitor svc 127.0.0.1 {master.port} 1\n")  # fmt: skip
    sentinel = subprocess.Popen([find_redis_server(), str(conf), "--sentinel"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        client = connect(f"redis+sentinel://127.0.0.1:{free_port()},127.0.0.1:{port}/svc/3")
        wait_for(lambda: _pings(client), 30, what="the master through the Sentinel")
        client.set("through-sentinel", "yes")
        direct = redis.Redis(host="127.0.0.1", port=master.port, db=3)
        assert direct.get("through-sentinel") == b"yes"
    finally:
        sentinel.kill()
        sentinel.wait(10)
    parsed = parse_sentinel("redis+sentinel://:pw@a:1,[::1]:2/mymaster/2")
    assert parsed.hosts == [("a", 1), ("::1", 2)] and parsed.service == "mymaster"
    assert parsed.db == 2 and parsed.password == "pw" and parsed.username is None
    for bad, what in [("redis+sentinel://a/svc", "HOST:PORT"), ("redis+sentinel://a:1", "path")]:
        with pytest.raises(ValueError, match=what):
            parse_sentinel(bad)
    # an operator's bad URL is one line and exit 2, before anything starts
    for cmd in (["scheduler"], ["worker", "--model", "demo"]):
        argv = [
            sys.executable,
            "-m",
            "dllmserve.cli",
            *cmd,
            "--redis-url",
            "redis+sentinel://a/svc",
        ]
        out = subprocess.run(argv, capture_output=True, text=True)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert "is not HOST:PORT" in out.stderr


def _pings(client) -> bool:
    try:
        return bool(client.ping())
    except redis.exceptions.RedisError:
        return False
