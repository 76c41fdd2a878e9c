"""The worker process: load the model once, register, run the loop until SIGTERM drains it."""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
import uuid

from dllmserve.broker.redis_link import connect
from dllmserve.engine.protocol import StepEngine
from dllmserve.logs import ready
from dllmserve.worker import http
from dllmserve.worker.config import WorkerConfig
from dllmserve.worker.gpu import take_gpu
from dllmserve.worker.heartbeat import Heartbeat, fixed_record
from dllmserve.worker.loop import WorkerLoop

log = logging.getLogger(__name__)
READY_LINE = "DLLMSERVE_WORKER_READY"


def build_engine(cfg: WorkerConfig) -> StepEngine:
    """The engine the worker serves: a checkpoint, or random weights of a named shape."""
    from dllmserve.engine.engine import Engine

    if cfg.random_shape:
        return Engine.from_random_shape(cfg.random_shape, cfg.engine)
    return Engine.from_pretrained(cfg.model, cfg.engine)


def run(cfg: WorkerConfig, engine: StepEngine | None = None) -> None:
    # before CUDA starts; held (the lock stays open) until the process ends
    gpu = take_gpu(cfg.gpu_lock_dir) if engine is None and cfg.engine.device != "cpu" else None
    probes = http.Probes()
    server = http.serve(probes, cfg.http_host, cfg.http_port) if cfg.http_port else None
    if server is not None:
        log.info("worker http (/metrics, /livez, /readyz) on port %d", server.server_port)
    engine = engine if engine is not None else build_engine(cfg)
    if str(engine.device).startswith("cuda"):  # before registering: no request waits for it
        start = time.monotonic()
        engine.warm_up()
        took = time.monotonic() - start
        log.info("warmed up (kernels compiled, graphs captured) in %.1f s", took)
    worker_id = cfg.worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    client = connect(cfg.redis_url, health_check_interval=10)
    loop = WorkerLoop(engine, client, cfg, worker_id)
    loop.ensure_group()
    loop.update_snapshot()
    slots = cfg.slots or 2 * engine.max_num_seqs
    fixed = fixed_record(loop.model_name, str(engine.device), slots, engine.limits)
    hb = Heartbeat(
        client,
        cfg,
        fixed,
        lambda: loop.snapshot,
        draining=loop.stop,
        paused=loop.watchdog.tripped,
        reaped=loop.reaped,
    )
    hb.beat()
    hb.start()
    probes.registry = loop.observe.metrics.registry
    probes.loop, probes.heartbeat = loop, hb

    def stop_heartbeat() -> None:
        hb.halt.set()
        hb.join(timeout=10)

    def on_term(signum, frame):
        loop.stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    claimed = f" (GPU {gpu.gpu}, claimed in {cfg.gpu_lock_dir})" if gpu else ""
    log.info("worker %s serving %s on %s%s", worker_id, loop.model_name, engine.device, claimed)
    port = server.server_port if server is not None else 0
    ready(READY_LINE, id=worker_id, model=loop.model_name, http_port=port)
    try:
        loop.run(before_leave=stop_heartbeat)
    finally:
        hb.halt.set()
        if server is not None:
            server.shutdown()
        log.info("worker %s stopped", worker_id)
