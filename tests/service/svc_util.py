"""Helpers shared by the service tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from dllmserve.scheduler import queue as q
from dllmserve.scheduler.local_redis import LocalRedis, free_port


def wait_for(pred, timeout_s: float = 60.0, interval_s: float = 0.05, what: str = "condition"):
    """Poll `pred` until it returns something truthy (bounded; no timing is asserted)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(interval_s)
    raise AssertionError(f"timed out waiting for {what}")


class Cluster:
    """Processes of one test service: redis, schedulers, workers (all killed at teardown)."""

    def __init__(self, root: Path, model: Path, redis_password: str = "") -> None:
        self.root = root
        self.model = model
        self.redis = LocalRedis(root / "redis", password=redis_password).start()
        self.url = self.redis.url
        self.client = redis.Redis.from_url(self.url)
        self.schedulers: list[tuple[subprocess.Popen, int]] = []
        self.workers: list[subprocess.Popen] = []
        self._n = 0

    def _spawn(self, args: list[str], env: dict | None = None) -> subprocess.Popen:
        self._n += 1
        log = open(self.root / f"proc{self._n}-{args[0]}.log", "wb")
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                    # no fixed ports: tests that read /metrics pass --metrics-port/--http-port
                    "DLLMSERVE_METRICS_PORT": "0", "DLLMSERVE_WORKER_HTTP_PORT": "0",
                    **(env or {})}  # fmt: skip
        cmd = [sys.executable, "-m", "dllmserve.cli", "--log-level", "INFO", *args]
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
        p.log_path = log.name  # type: ignore[attr-defined]
        log.close()
        return p

    def add_scheduler(self, *extra: str) -> int:
        port = free_port()
        p = self._spawn(
            ["scheduler", "--redis-url", self.url, "--listen", f"127.0.0.1:{port}",
             "--lease-ttl-ms", "1500", *extra]
        )  # fmt: skip
        self.schedulers.append((p, port))
        wait_for(lambda: self._log_has(p, "DLLMSERVE_SCHEDULER_READY"), 60, what="scheduler")
        return port

    def add_worker(self, *extra: str, env: dict | None = None, wait: bool = True):
        p = self._spawn(
            ["worker", "--redis-url", self.url, "--model", str(self.model), "--device", "cpu",
             "--max-num-seqs", "16", "--num-cache-pages", "4096", "--heartbeat-interval", "0.3",
             "--heartbeat-ttl", "2", *extra],
            env=env,
        )  # fmt: skip
        self.workers.append(p)
        if wait:
            self.wait_worker(p)
        return p

    def wait_worker(self, p: subprocess.Popen) -> str:
        line = wait_for(lambda: self._log_has(p, "DLLMSERVE_WORKER_READY"), 120, what="worker")
        wid = line.split("id=")[1].split()[0]
        wait_for(lambda: self.client.exists(q.worker_key(wid)), 30, what="heartbeat")
        p.worker_id = wid  # type: ignore[attr-defined]
        return wid

    @staticmethod
    def _log_has(p: subprocess.Popen, marker: str) -> str | None:
        if p.poll() is not None:
            raise AssertionError(
                f"process exited with {p.returncode}: {Path(p.log_path).read_text()}"
            )
        for line in Path(p.log_path).read_text(errors="replace").splitlines():
            if marker in line:
                return line
        return None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.schedulers[0][1]}"

    def worker_hash(self, worker_id: str) -> dict[str, str]:
        return {q.s(k): q.s(v) for k, v in self.client.hgetall(q.worker_key(worker_id)).items()}

    def req(self, request_id: str) -> dict[str, str]:
        h = self.client.hgetall(q.req_key(request_id))
        return {q.s(k): q.s(v) for k, v in h.items() if k != b"body"}

    def kill(self, p: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        if p.poll() is None:
            p.send_signal(sig)
            p.wait(60)

    def close(self) -> None:
        for p in [*self.workers, *(s for s, _ in self.schedulers)]:
            if p.poll() is None:
                p.kill()
                p.wait(30)
        self.client.close()
        self.redis.stop(kill=True)
