"""Workers that all see a host's GPUs share them through a lock directory: each takes a
different one, a worker past the GPU count fails with a clear error, and a GPU whose worker
died is free again (the kernel drops the lock with the process)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dllmserve.worker.gpu import claim_gpu, take_gpu

HOLD = (
    "import sys; from dllmserve.worker.gpu import claim_gpu; "
    "c = claim_gpu(sys.argv[1], sys.argv[2].split(',')); print(c.gpu, flush=True); "
    "sys.stdin.read()"
)


def _holder(lock_dir, gpus: str) -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(lock_dir), gpus],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    return p, p.stdout.readline().strip()


def test_workers_take_different_gpus_and_a_dead_ones_gpu_is_free_again(tmp_path):
    first, gpu = _holder(tmp_path, "0,1")
    try:
        assert gpu == "0"
        second = claim_gpu(tmp_path, ["0", "1"])  # another open file: excluded like a process
        assert second.gpu == "1"
        with pytest.raises(RuntimeError, match="held by another worker.*--gpu-lock-dir"):
            claim_gpu(tmp_path, ["0", "1"])
        first.kill()
        first.wait(30)
        assert claim_gpu(tmp_path, ["0", "1"]).gpu == "0"  # freed by the kernel
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(30)


def test_take_gpu_narrows_the_environment_to_the_claimed_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aaa,GPU-bbb")
    holder, gpu = _holder(tmp_path, "GPU-aaa,GPU-bbb")
    try:
        claim = take_gpu(str(tmp_path))
        assert (gpu, claim.gpu, os.environ["CUDA_VISIBLE_DEVICES"]) == (
            "GPU-aaa",
            "GPU-bbb",
            "GPU-bbb",
        )
    finally:
        holder.kill()
        holder.wait(30)


def test_one_visible_gpu_or_no_lock_dir_leaves_the_environment_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert take_gpu(str(tmp_path)) is None and os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert take_gpu("") is None and os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
