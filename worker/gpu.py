"""Which GPU a worker takes.

On Kubernetes the device plugin gives each worker pod one GPU, and a worker uses the GPU its
environment shows it. Docker Compose cannot hand each replica of a service its own GPU (every
replica would get the same one), so there each worker sees all of the host's GPUs plus a lock
directory shared by the host's workers (`--gpu-lock-dir`), and takes the first GPU no other
worker holds: an exclusive flock on `DIR/gpu-ID.lock`, which the kernel drops when the process
ends however it ends. It then narrows CUDA_VISIBLE_DEVICES to that GPU before CUDA starts.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)


@dataclass
class GpuClaim:
    gpu: str  # the id as CUDA_VISIBLE_DEVICES names it (an index or a GPU-UUID)
    lock: IO  # held open for the life of the process: closing it frees the GPU


def visible_gpus() -> list[str]:
    """The GPU ids this process may use, without starting CUDA."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip()]
    try:
        import torch

        # Counted through NVML: CUDA is not initialised, so CUDA_VISIBLE_DEVICES still applies.
        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        return []


def claim_gpu(lock_dir: str | Path, gpus: list[str]) -> GpuClaim:
    """An exclusive hold on the first of `gpus` that no other process holds in `lock_dir`."""
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    for gpu in gpus:
        f = open(lock_dir / f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', gpu)}.lock", "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            continue
        return GpuClaim(gpu, f)
    raise RuntimeError(
        f"every GPU this worker sees ({', '.join(gpus)}) is held by another worker sharing "
        f"--gpu-lock-dir {lock_dir}: run at most one worker per GPU"
    )


def take_gpu(lock_dir: str) -> GpuClaim | None:
    """With several GPUs in view and a lock directory, claim one and narrow the environment to
    it; otherwise leave the environment as it is (one GPU, or none: the CPU)."""
    gpus = visible_gpus()
    if len(gpus) <= 1:
        return None
    if not lock_dir:
        log.warning(
            "%d GPUs visible, this worker uses the first; give each worker its own GPU "
            "(CUDA_VISIBLE_DEVICES, the device plugin) or share --gpu-lock-dir among them",
            len(gpus),
        )
        return None
    claim = claim_gpu(lock_dir, gpus)
    os.environ["CUDA_VISIBLE_DEVICES"] = claim.gpu
    log.info("claimed GPU %s of %s (lock directory %s)", claim.gpu, ",".join(gpus), lock_dir)
    return claim
