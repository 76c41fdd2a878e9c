"""Small helpers shared by the Triton kernel launchers."""

from __future__ import annotations

import functools

import torch


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get exact fp32 dots (Triton would use TF32); 16-bit inputs ignore this."""
    return "ieee" if dtype == torch.float32 else "tf32"


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; a nominal 4 for the CPU interpreter."""
    if device.type != "cuda":
        return 4
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def rows(t: torch.Tensor) -> torch.Tensor:
    """The kernels index the last dim with unit stride; copy the rare tensor that differs."""
    return t if t.stride(-1) == 1 else t.contiguous()
