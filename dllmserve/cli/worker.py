"""`dllmserve worker`: a worker process owning one GPU (or the CPU)."""

from __future__ import annotations

import argparse
import sys

from dllmserve.cli.common import (
    OPERATOR_EXIT,
    OperatorError,
    add_model_args,
    add_redis_arg,
    redacted,
    require_redis_url,
    resolve_model,
)
from dllmserve.cli.config_args import add_config_args, config_from_args
from dllmserve.engine.config import EngineConfig
from dllmserve.errors import ValidationError

DESCRIPTION = """\
A worker: loads one model once onto one GPU (or the CPU), registers in Redis, and runs the
engine on the batches the dispatcher sends it, publishing every denoising step. A SIGTERM
drains it: running requests finish, unread work goes back to the queue. /metrics, /livez and
/readyz are served on --http-port.

GPU: the one its environment gives it (CUDA_VISIBLE_DEVICES, the Kubernetes device plugin).
Workers that all see every GPU of a host (docker compose replicas) share --gpu-lock-dir and
each takes the first GPU no other holds."""

EXAMPLES = """\
examples:
  dllmserve worker --redis-url redis://:PASSWORD@redis:6379/0 --model /models/LLaDA-8B-Instruct
  CUDA_VISIBLE_DEVICES=1 dllmserve worker --model /models/Dream-v0-Instruct-7B
  dllmserve worker --device cpu --model demo        # the built-in tiny model, no GPU"""


def add_worker_args(p: argparse.ArgumentParser) -> None:
    from dllmserve.worker.config import WorkerConfig

    add_config_args(p, WorkerConfig)
    add_config_args(p, EngineConfig)


def worker_config(a: argparse.Namespace):
    from dllmserve.worker.config import WorkerConfig

    engine = config_from_args(EngineConfig, a)  # its range errors first: no service needed
    return config_from_args(
        WorkerConfig,
        a,
        redis_url=require_redis_url(a.redis_url),
        model="" if a.random_shape else resolve_model(a.model),
        random_shape=a.random_shape,
        engine=engine,
    )


def check_redis(url: str) -> None:
    """Reach Redis before loading a model that can take minutes: a wrong URL is one line."""
    import redis

    from dllmserve.broker.redis_link import check_url, connect

    try:
        check_url(url)
    except ValueError as e:
        raise OperatorError(f"--redis-url {redacted(url)}: {e}") from None
    client = connect(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        client.ping()
    except redis.exceptions.RedisError as e:
        raise OperatorError(
            f"cannot reach Redis at {redacted(url)} ({e}); start it, or fix --redis-url / "
            "$DLLMSERVE_REDIS_URL"
        ) from None
    finally:
        client.close()


def cmd_worker(a: argparse.Namespace) -> int:
    from dllmserve.worker.main import run

    try:
        cfg = worker_config(a)
    except ValidationError as e:
        print(f"dllmserve worker: {e}", file=sys.stderr)
        return OPERATOR_EXIT
    check_redis(cfg.redis_url)
    try:
        run(cfg)
    except ValidationError as e:  # a setting the model refuses at load (fp8-experts, dense)
        raise OperatorError(f"--{e.field.replace('_', '-')}: {e.reason}") from None
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    w = sub.add_parser(
        "worker",
        help="a worker process owning one GPU (or the CPU)",
        description=DESCRIPTION,
        epilog=EXAMPLES,
    )
    add_redis_arg(w)
    add_model_args(w)
    add_worker_args(w)
    w.set_defaults(fn=cmd_worker)
