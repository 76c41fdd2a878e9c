"""`dllmserve serve` supervises its children: a worker killed with SIGKILL is restarted and the
stream it was running completes (re-run, as in a cluster); a worker that keeps dying makes serve
give up with one line naming it and its exit status, and one that refuses its settings stops
serve at once; the scheduler's metrics and the workers' probes listen on 127.0.0.1 only; in
json mode every line serve and its children write is JSON."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from svc_util import LONG, Stream, check_unbroken, wait_for

from dllmserve.assets import tasks
from dllmserve.scheduler.local_redis import free_port

LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F"}  # /proc/net/tcp's 127.0.0.1
FAST_HEARTBEATS = {"DLLMSERVE_HEARTBEAT_INTERVAL": "0.3", "DLLMSERVE_HEARTBEAT_TTL": "2"}


def _serve(log: Path, top: list[str], *args: str, env: dict | None = None) -> subprocess.Popen:
    """`dllmserve TOP... serve --device cpu ... ARGS...`, its output in `log`."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    full_env.pop("DLLMSERVE_REDIS_URL", None)
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "dllmserve.cli", *top, "serve", "--device", "cpu",
             "--listen", "127.0.0.1:0", "--max-num-seqs", "4", "--num-cache-pages", "512",
             *args],
            stdout=out, stderr=subprocess.STDOUT, env=full_env,
        )  # fmt: skip


def _ready(serve: subprocess.Popen, log: Path) -> str:
    def up() -> bool:
        assert serve.poll() is None, log.read_text()
        return "dllmserve: ready" in log.read_text()

    wait_for(up, 300, 0.2, what="serve ready")
    return "127.0.0.1:" + log.read_text().split("scheduler on localhost:")[1].split(",")[0]


def _children(pid: int) -> dict[int, bytes]:
    """pid -> command line of every process whose parent is `pid`."""
    out = {}
    for d in Path("/proc").iterdir():
        try:
            if (
                d.name.isdigit()
                and int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid
            ):
                out[int(d.name)] = (d / "cmdline").read_bytes()
        except OSError:
            continue
    return out


def _workers(serve: subprocess.Popen) -> list[int]:
    return [p for p, cmd in _children(serve.pid).items() if b"\0worker\0" in cmd]


def _listeners(port: int) -> set[str]:
    found = set()
    for name in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.rpartition(":")[2], 16) == port:
                found.add(local.rpartition(":")[0])
    return found


def _stop(serve: subprocess.Popen) -> int:
    if serve.poll() is None:
        serve.send_signal(signal.SIGTERM)
    return serve.wait(120)


def test_a_killed_worker_is_restarted_and_its_stream_completes(tmp_path):
    log = tmp_path / "serve.log"
    metrics = free_port()
    serve = _serve(log, ["--log-level", "INFO"], "--no-gateway", "--metrics-port", str(metrics),
                   env=FAST_HEARTBEATS)  # fmt: skip
    try:
        target = _ready(serve, log)
        (worker,) = _workers(serve)
        (sched,) = [c for c in _children(serve.pid).values() if b"\0scheduler\0" in c]
        assert b"\0--trust-client-header\0" in sched  # its gateway's callers get a bucket each
        # 21.6: the scheduler's metrics and the worker's probes are this machine's only
        http_port = int(re.search(rb"--http-port\0(\d+)", _children(serve.pid)[worker])[1])
        for port in (metrics, http_port):
            assert _listeners(port) and _listeners(port) <= LOOPBACK, (port, _listeners(port))
        stream = Stream(target, "in-flight", LONG)
        stream.start()
        wait_for(lambda: len(stream.steps()) >= 2, 120, what="the stream's first steps")
        os.kill(worker, signal.SIGKILL)
        stream.join(300)
        check_unbroken(stream, LONG["gen_length"])
        assert stream.completed().attempt == 2  # re-run by the restarted worker
        text = log.read_text()
        assert f"dllmserve serve: worker 1 (pid {worker}) was killed by SIGKILL; restarting" in text
        (again,) = _workers(serve)
        assert again != worker and serve.poll() is None
    finally:
        assert _stop(serve) == 0, log.read_text()[-3000:]


def test_a_worker_that_keeps_dying_makes_serve_give_up_in_one_line(tmp_path):
    """A crash loop (each worker killed with SIGKILL soon after its start, as an OOM killer
    would): restarted --worker-restarts times, then serve gives up in one line."""
    log = tmp_path / "serve.log"
    serve = _serve(log, ["--log-level", "WARNING"], "--no-gateway", "--metrics-port", "0",
                   "--worker-restarts", "2")  # fmt: skip
    try:
        killed: set[int] = set()
        while serve.poll() is None and len(killed) < 3:
            fresh = [p for p in _workers(serve) if p not in killed]
            for pid in fresh:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            time.sleep(0.05)
        assert serve.wait(300) == 1, log.read_text()
    finally:
        _stop(serve)
    text = log.read_text()
    restarts = re.findall(r"dllmserve serve: worker 1 \(pid \d+\) was killed by SIGKILL; "
                          r"restarting it in \d+ s", text)  # fmt: skip
    assert len(restarts) == 2, text
    (last,) = [line for line in text.splitlines() if "giving up" in line]
    assert re.fullmatch(r"dllmserve serve: worker 1 \(pid \d+\) was killed by SIGKILL after 2 "
                        r"restarts in a row; giving up", last)  # fmt: skip
    assert "Traceback" not in text


def test_a_worker_that_refuses_its_settings_stops_serve_at_once(tmp_path):
    """A worker that exits with the operator-mistake status would refuse every restart the
    same way: serve stops after the first, its reason in one line, without a traceback."""
    log = tmp_path / "serve.log"
    # A variable only the worker's parser reads, with a bad value: the worker exits with 2.
    children = tmp_path / "children.log"  # --log-file: the children's lines, not serve's
    serve = _serve(log, ["--log-level", "WARNING"], "--no-gateway", "--metrics-port", "0",
                   "--log-file", str(children), env={"DLLMSERVE_STALL_FLOOR": "soon"})  # fmt: skip
    assert serve.wait(300) == 1, log.read_text()
    text = log.read_text()
    assert "restarting" not in text, text
    (last,) = [line for line in text.splitlines() if "refused how it was started" in line]
    assert re.fullmatch(r"dllmserve serve: worker 1 \(pid \d+\) exited with status 2: it refused "
                        r"how it was started \(its own log line says why\); a restart would "
                        r"refuse again, stopping", last)  # fmt: skip
    reason = "$DLLMSERVE_STALL_FLOOR='soon'"  # the worker's own reason, in --log-file
    assert children.read_text().count(reason) == 1 and reason not in text
    assert "Traceback" not in text + children.read_text()


def test_a_setting_the_model_refuses_at_load_is_one_line(rserver):
    """fp8-experts on a dense checkpoint is refused by the loader, after the flags parsed: the
    worker still says so in one line, naming the flag, and exits with 2."""
    proc = subprocess.run(
        [sys.executable, "-m", "dllmserve.cli", "worker", "--model", "demo", "--device", "cpu",
         "--quantization", "fp8-experts", "--redis-url", rserver.url, "--http-port", "0"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert ("dllmserve worker: --quantization: 'fp8-experts' needs a mixture-of-experts model"
            in proc.stderr)  # fmt: skip
    assert "Traceback" not in proc.stderr


def test_json_mode_every_line_of_serve_and_its_children_is_json(tmp_path):
    log = tmp_path / "serve.log"
    serve = _serve(log, ["--log-format", "json"], "--http-listen", "127.0.0.1:0",
                   "--metrics-port", "0", "--demo", "--exit-after-demo")  # fmt: skip
    assert serve.wait(300) == 0, log.read_text()[-3000:]
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    markers = {r["marker"] for r in records if r.get("event") == "ready"}
    assert markers == {"DLLMSERVE_SCHEDULER_READY", "DLLMSERVE_WORKER_READY",
                       "DLLMSERVE_GATEWAY_READY"}  # fmt: skip
    assert any(r["message"].startswith("dllmserve: ready") for r in records)
    assert any(r["message"].startswith("redis: private redis-server") for r in records)
    (done,) = [r for r in records if "finish_reason" in r and "token_ids" in r]  # the demo's
    assert tasks.demo().answer in done["text"]


def test_a_signal_during_startup_stops_every_child(tmp_path):
    """SIGTERM before any worker is ready (a model still loading): serve stops its children
    (no orphan keeps a port or the CPU) and exits 0."""
    log = tmp_path / "serve.log"
    serve = _serve(log, ["--log-level", "WARNING"], "--no-gateway", "--metrics-port", "0")
    wait_for(lambda: serve.poll() is not None or "scheduler on" in log.read_text(), 120)
    kids = _children(serve.pid)
    assert len(kids) >= 3, kids  # redis-server, scheduler, worker
    assert _stop(serve) == 0, log.read_text()
    assert "Traceback" not in log.read_text()
    for pid in kids:
        assert not Path(f"/proc/{pid}").exists() or b"Z" in _state(pid), pid


def _state(pid: int) -> bytes:
    """The process' state letter (Z: a zombie, exited but not yet reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return b"Z"
