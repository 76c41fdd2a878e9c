"""`dllmserve worker`: a worker process owning one GPU (or the CPU)."""

from __future__ import annotations

import argparse

from dllmserve.cli.common import add_random_shape_arg, env, resolve_model


def add_worker_args(p: argparse.ArgumentParser, with_model: bool = True) -> None:
    if with_model:
        p.add_argument(
            "--model",
            default=env("DLLMSERVE_MODEL", "demo"),
            help="checkpoint directory, or 'demo' for the built-in tiny model",
        )
        add_random_shape_arg(p)
    p.add_argument("--model-name", default="", help="name clients use (default: directory name)")
    p.add_argument("--device", default=env("DLLMSERVE_DEVICE") or None)
    p.add_argument(
        "--gpu-lock-dir",
        default=env("DLLMSERVE_GPU_LOCK_DIR"),
        help="a directory shared by the workers of a host that all see its GPUs: each takes the "
        "first GPU no other holds (default: use the GPU the environment gives)",
    )
    p.add_argument("--dtype", default=None)
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--max-num-batched-tokens", type=int, default=None)
    p.add_argument("--num-cache-pages", type=int, default=None)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--slots", type=int, default=0, help="requests accepted at once (0: 2x seqs)")
    p.add_argument("--heartbeat-interval", type=float, default=1.0)
    p.add_argument("--heartbeat-ttl", type=float, default=5.0)
    p.add_argument("--worker-id", default="")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--sync-publish", action="store_true", help="publish on the engine's thread (debugging)"
    )


def worker_config(a: argparse.Namespace):
    from dllmserve.worker.config import WorkerConfig

    return WorkerConfig(
        redis_url=a.redis_url,
        model="" if a.random_shape else resolve_model(a.model),
        random_shape=a.random_shape,
        model_name=a.model_name,
        device=a.device,
        gpu_lock_dir=a.gpu_lock_dir,
        dtype=a.dtype,
        max_num_seqs=a.max_num_seqs,
        max_num_batched_tokens=a.max_num_batched_tokens,
        num_cache_pages=a.num_cache_pages,
        gpu_memory_utilization=a.gpu_memory_utilization,
        slots=a.slots,
        heartbeat_interval_s=a.heartbeat_interval,
        heartbeat_ttl_s=a.heartbeat_ttl,
        worker_id=a.worker_id,
        seed=a.seed,
        async_publish=not a.sync_publish,
    )


def cmd_worker(a: argparse.Namespace) -> int:
    from dllmserve.worker.main import run

    run(worker_config(a))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    w = sub.add_parser("worker", help="a worker process owning one GPU (or the CPU)")
    w.add_argument("--redis-url", default=env("DLLMSERVE_REDIS_URL") or "redis://127.0.0.1:6379/0")
    add_worker_args(w)
    w.set_defaults(fn=cmd_worker)
