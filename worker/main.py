"""The worker process: load the model once, register, run the loop until SIGTERM drains it."""

from __future__ import annotations

import logging
import os
import signal
import socket
import uuid

import redis

from dllmserve.worker.config import WorkerConfig
from dllmserve.worker.gpu import take_gpu
from dllmserve.worker.heartbeat import Heartbeat
from dllmserve.worker.loop import WorkerLoop

log = logging.getLogger(__name__)
READY_LINE = "DLLMSERVE_WORKER_READY"


def build_engine(cfg: WorkerConfig):
    from dllmserve.engine.engine import Engine

    kwargs = {"max_num_seqs": cfg.max_num_seqs, "seed": cfg.seed}
    if cfg.max_num_batched_tokens:
        kwargs["max_num_batched_tokens"] = cfg.max_num_batched_tokens
    if cfg.num_cache_pages:
        kwargs["num_cache_pages"] = cfg.num_cache_pages
    if cfg.gpu_memory_utilization:
        kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
    if cfg.random_shape:
        from dllmserve.models.shapes import random_engine

        return random_engine(cfg.random_shape, device=cfg.device, dtype=cfg.dtype, **kwargs)
    return Engine.from_pretrained(cfg.model, device=cfg.device, dtype=cfg.dtype, **kwargs)


def run(cfg: WorkerConfig, engine=None) -> None:
    # before CUDA starts; held (the lock stays open) until the process ends
    gpu = take_gpu(cfg.gpu_lock_dir) if engine is None and cfg.device != "cpu" else None
    engine = engine if engine is not None else build_engine(cfg)
    worker_id = cfg.worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    client = redis.Redis.from_url(cfg.redis_url, health_check_interval=10)
    loop = WorkerLoop(engine, client, cfg, worker_id)
    loop.ensure_group()
    loop.update_snapshot()
    slots = cfg.slots or 2 * engine.max_num_seqs
    hb = Heartbeat(loop, client, str(engine.device), slots)
    hb.beat()
    hb.start()

    def stop_heartbeat() -> None:
        hb.halt.set()
        hb.join(timeout=10)

    loop.before_leave = stop_heartbeat

    def on_term(signum, frame):
        loop.stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    claimed = f" (GPU {gpu.gpu}, claimed in {cfg.gpu_lock_dir})" if gpu else ""
    log.info("worker %s serving %s on %s%s", worker_id, loop.model_name, engine.device, claimed)
    print(f"{READY_LINE} id={worker_id} model={loop.model_name}", flush=True)
    try:
        loop.run()
    finally:
        hb.halt.set()
        log.info("worker %s stopped", worker_id)
