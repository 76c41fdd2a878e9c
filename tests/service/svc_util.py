"""Helpers shared by the service tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import redis
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from dllmserve.broker import redis_keys as rk
from dllmserve.broker.admission import Admission
from dllmserve.broker.scripts import Enqueued, StoredRequest
from dllmserve.client import Canvas, Client, Completed, StepUpdate
from dllmserve.sampling_params import SamplingParams
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
        wid = json.loads(line)["id"] if line.startswith("{") else line.split("id=")[1].split()[0]
        wait_for(lambda: self.client.exists(rk.worker_key(wid)), 30, what="heartbeat")
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
        return {
            rk.text(k): rk.text(v) for k, v in self.client.hgetall(rk.worker_key(worker_id)).items()
        }

    def req(self, request_id: str) -> dict[str, str]:
        h = self.client.hgetall(rk.req_key(request_id))
        return {rk.text(k): rk.text(v) for k, v in h.items() if k != b"admission"}

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


LONG = {"gen_length": 256, "steps": 256, "block_length": 32, "seed": 7, "stop_at_eos": False}
SHORT = {"gen_length": 16, "steps": 8, "seed": 2}


class Stream(threading.Thread):
    """One client stream in the background; keeps every event (or the error)."""

    def __init__(self, target, request_id: str, sp: dict, prompt: str = "fault", **kw) -> None:
        super().__init__(daemon=True)
        self.args = (target, request_id, sp, prompt, kw)
        self.events: list = []
        self.error: grpc.RpcError | None = None

    def run(self) -> None:
        target, rid, sp, prompt, kw = self.args
        try:
            with Client(target) as c:
                for ev in c.generate(prompt, request_id=rid, sampling_params=sp,
                                     sparse_config={}, timeout=300, **kw):  # fmt: skip
                    self.events.append(ev)
        except grpc.RpcError as e:
            self.error = e

    def steps(self):
        return [e for e in self.events if isinstance(e, StepUpdate)]

    def completed(self):
        done = [e for e in self.events if isinstance(e, Completed)]
        return done[0] if done else None


def check_unbroken(stream: Stream, gen_length: int) -> None:
    """Within each attempt, steps run 1, 2, 3, ... with no gap or duplicate; the last attempt
    rebuilds the final tokens."""
    assert stream.error is None, stream.error
    done = stream.completed()
    assert done is not None
    by_attempt: dict[int, list[int]] = {}
    for s in stream.steps():
        by_attempt.setdefault(s.attempt, []).append(s.step)
    assert sorted(by_attempt) == list(by_attempt), "attempts must only go up"
    for steps in by_attempt.values():
        assert steps == list(range(1, len(steps) + 1))
    assert max(by_attempt) == done.attempt
    canvas = Canvas()
    for s in stream.steps():
        canvas.apply(s)
    assert canvas.token_ids(gen_length) == list(done.token_ids)
    assert canvas.text == done.text


def enqueue(broker, rid, prompt="body", max_queue=10, prio=0, model="m", client="ip:c",
            per_client=0, owned=False) -> Enqueued:  # fmt: skip
    """Enqueue a request whose admission is `prompt` with the default sampling."""
    adm = Admission(prompt, SamplingParams(gen_length=8, steps=8), None)
    req = StoredRequest(request_id=rid, admission=adm, model=model, priority=prio, deadline=0.0,
                        options=b"", client=client, quota="", last_step=8, ttl_s=60)  # fmt: skip
    return broker.enqueue(req, max_queue=max_queue, per_client=per_client, owned=owned)


def ready(r, worker, slots=16, model="m"):
    r.hset(rk.worker_key(worker), mapping={"model": model, "slots": slots, "state": "ready"})


def lua_assign(r, broker, worker, rids, tag=""):
    pending = [(rk.text(eid), rk.text(f[b"id"])) for eid, f in r.xrange(rk.PENDING)]
    if not r.exists(rk.worker_key(worker)):
        ready(r, worker)
    return broker.assign(worker, [(e, rid) for e, rid in pending if rid in rids], tag)


def bad_request_field(err: grpc.RpcError) -> str:
    """The field a gRPC error's google.rpc.BadRequest detail names ("" when it has none)."""
    st = rpc_status.from_call(err)
    for d in st.details if st else []:
        if d.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            d.Unpack(br)
            return br.field_violations[0].field
    return ""
