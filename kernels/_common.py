"""Small helpers shared by the Triton kernel launchers."""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl


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


def block_d(head_dim: int) -> int:
    """Head-dim tile: a power of two (tl.arange) of at least 16 (tl.dot's K)."""
    return max(16, triton.next_power_of_2(head_dim))


@triton.jit
def dim_mask(ok, d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """2-D mask from a per-row mask, with the head-dim padding only when there is some, so
    real shapes (D = 64, 128) keep their vectorised loads."""
    m = ok[:, None]
    if BLOCK_D != HEAD_DIM:
        m = m & (d[None, :] < HEAD_DIM)
    return m


def require(kernel: str, ok: bool, name: str, want: str, got: torch.Tensor) -> None:
    """A launcher's argument check: ValueError naming the kernel, the argument, what it must be
    and what it got."""
    if not ok:
        raise ValueError(f"{kernel}: {name} must be {want}, got {got.dtype} {tuple(got.shape)}")


@triton.jit
def position_logits(L, block, stride_lr, stride_lb):
    """A sampler program's position (one per row of a [R, B, V] logits slab): its packed row
    r * B + b, its request r, and the pointer to its logits."""
    row = tl.program_id(0)
    r = row // block
    return row, r, L + r.to(tl.int64) * stride_lr + (row % block).to(tl.int64) * stride_lb
