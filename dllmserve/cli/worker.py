"""`dllmserve worker`: a worker process owning one GPU (or the CPU)."""

from __future__ import annotations

import argparse
import sys

from dllmserve.cli.common import add_random_shape_arg, env, resolve_model
from dllmserve.cli.config_args import add_config_args, config_from_args
from dllmserve.engine.config import EngineConfig
from dllmserve.errors import ValidationError


def add_worker_args(p: argparse.ArgumentParser, with_model: bool = True) -> None:
    if with_model:
        p.add_argument(
            "--model",
            default=env("DLLMSERVE_MODEL", "demo"),
            help="checkpoint directory, or 'demo' for the built-in tiny model",
        )
        add_random_shape_arg(p)
    p.add_argument("--model-name", default="", help="name clients use (default: directory name)")
    p.add_argument("--slots", type=int, default=0, help="requests accepted at once (0: 2x seqs)")
    p.add_argument("--heartbeat-interval", type=float, default=1.0)
    p.add_argument("--heartbeat-ttl", type=float, default=5.0)
    p.add_argument(
        "--stall-factor",
        type=float,
        default=20.0,
        help="watchdog: an iteration this many times the moving average (and over "
        "--stall-floor) takes the worker out and its requests are re-run elsewhere",
    )
    p.add_argument("--stall-floor", type=float, default=60.0, help="watchdog floor, seconds")
    p.add_argument("--worker-id", default="")
    p.add_argument(
        "--sync-publish", action="store_true", help="publish on the engine's thread (debugging)"
    )
    p.add_argument(
        "--http-port",
        type=int,
        default=int(env("DLLMSERVE_WORKER_HTTP_PORT", "8081")),
        help="port of /metrics, /livez and /readyz (env DLLMSERVE_WORKER_HTTP_PORT; 0: none)",
    )
    add_config_args(p, EngineConfig)


def worker_config(a: argparse.Namespace):
    from dllmserve.worker.config import WorkerConfig

    return WorkerConfig(
        redis_url=a.redis_url,
        model="" if a.random_shape else resolve_model(a.model),
        random_shape=a.random_shape,
        model_name=a.model_name,
        engine=config_from_args(EngineConfig, a),
        slots=a.slots,
        heartbeat_interval_s=a.heartbeat_interval,
        heartbeat_ttl_s=a.heartbeat_ttl,
        stall_factor=a.stall_factor,
        stall_floor_s=a.stall_floor,
        worker_id=a.worker_id,
        async_publish=not a.sync_publish,
        http_port=a.http_port,
    )


def cmd_worker(a: argparse.Namespace) -> int:
    from dllmserve.worker.main import run

    try:
        cfg = worker_config(a)
    except ValidationError as e:
        print(f"dllmserve worker: {e}", file=sys.stderr)
        return 2
    run(cfg)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    w = sub.add_parser("worker", help="a worker process owning one GPU (or the CPU)")
    w.add_argument("--redis-url", default=env("DLLMSERVE_REDIS_URL") or "redis://127.0.0.1:6379/0")
    add_worker_args(w)
    w.set_defaults(fn=cmd_worker)
