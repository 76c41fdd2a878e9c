"""Numerics shared by the models: RMSNorm, rotary embeddings, SwiGLU and the linear layer.

They follow docs/models.md to the rounding step, since exact parity with the official checkpoints
is decided here. On CUDA the elementwise parts run as fused Triton kernels
(`dllmserve.kernels.elementwise`) that keep the same rounding steps; these PyTorch versions
are the CPU path and the kernels' reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dllmserve.models.fp8 import Fp8Rows, Fp8Weight, dequantized_operands
from dllmserve.models.skinny import gpu_linear

# On the CPU a GEMM's rounding depends on how many rows it has (the BLAS picks its kernel by
# shape), so a request's result would depend on its batch. Feeding the GEMM fixed-size row
# chunks makes every row see the same kernel: tokens depend only on the request itself.
_CPU_ROW_CHUNK = 32

KVTarget = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""(K pool, V pool [pages, page_size, Hkv, D], int64 entry of each packed row [T]): where a
layer's fresh K/V is written (a block-diffusion lane's cache entries)."""

use_fused_kernels = True
"""Run the fused Triton kernels on CUDA tensors (tests switch it off to compare)."""


def _fused(x: torch.Tensor) -> bool:
    return x.is_cuda and use_fused_kernels


def linear(
    x: torch.Tensor | Fp8Rows, w: torch.Tensor | Fp8Weight, b: torch.Tensor | None = None
) -> torch.Tensor:
    if x.device.type != "cpu":
        return gpu_linear(x, w, b)  # cuBLAS / _scaled_mm, or the skinny kernel where faster
    if isinstance(w, Fp8Weight):
        xd, wd, dtype = dequantized_operands(x, w)
        return linear(xd, wd, None if b is None else b.float()).to(dtype)
    n = x.shape[0]
    pad = (-n) % _CPU_ROW_CHUNK
    if pad:
        x = torch.cat([x, x.new_zeros(pad, x.shape[1])])
    out = torch.cat([F.linear(c, w, b) for c in x.split(_CPU_ROW_CHUNK)])
    return out[:n]


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, quantize: bool = False
) -> torch.Tensor | Fp8Rows:
    """In fp32, cast back to the model dtype, then scale (LLaDA and Qwen2 agree on this order).
    `quantize`: returned as per-token FP8 rows for an FP8 GEMM (docs/design.md §14)."""
    if _fused(x):
        from dllmserve.kernels.elementwise import rms_norm as fused

        return _rows(fused(x, weight, eps, quantize), x.dtype)
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    h = weight * xf.to(x.dtype)
    return Fp8Rows.of(h) if quantize else h


def add_rms_norm(
    x: torch.Tensor,
    add: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    quantize: bool = False,
    keep: bool = False,
    second: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | Fp8Rows]:
    """The residual update x + add (in the model dtype) and its RMSNorm (see `rms_norm`);
    `keep`: quantized rows that carry their unquantized `values` too (one launch for both);
    `second`: a second addend, x + (add + second) with their sum rounded first (an MoE layer's
    routed and shared outputs, summed in the same launch)."""
    if _fused(x):
        from dllmserve.kernels.elementwise import add_rms_norm as fused

        x_out, h = fused(x, add, weight, eps, quantize, keep, second)
        return x_out, _rows(h, x.dtype)
    x = x + (add if second is None else add + second)
    h = rms_norm(x, weight, eps)
    return x, Fp8Rows.of(h, keep) if quantize else h


def silu_mul(gate_up: torch.Tensor, quantize: bool = False) -> torch.Tensor | Fp8Rows:
    """silu(gate) * up of a fused [gate | up] projection (`quantize`: as FP8 rows)."""
    if _fused(gate_up):
        from dllmserve.kernels.elementwise import silu_mul as fused

        return _rows(fused(gate_up, quantize), gate_up.dtype)
    gate, up = gate_up.chunk(2, dim=-1)
    out = F.silu(gate) * up
    return Fp8Rows.of(out) if quantize else out


def _rows(out, dtype: torch.dtype) -> torch.Tensor | Fp8Rows:
    """A fused kernel's result: a tensor, or (FP8 data, scales[, kept values]) when it
    quantized."""
    if not isinstance(out, tuple):
        return out
    data, scale, *kept = out
    return Fp8Rows(data, scale, dtype, *kept)


class Rotary:
    """Rotate-half (NeoX) RoPE with fp32 cos/sin tables, over each head's first `rot_dim` dims
    (partial rotary: LLaDA-MoE's `partial_rotary_factor`; the rest pass unrotated)."""

    def __init__(
        self,
        head_dim: int,
        theta: float,
        max_len: int,
        device: torch.device,
        in_fp32: bool,
        rot_dim: int | None = None,
    ) -> None:
        rot = rot_dim or head_dim
        inv_freq = 1.0 / (theta ** (torch.arange(0, rot, 2, dtype=torch.int64).float() / rot))
        pos = torch.arange(max_len, dtype=torch.float32)
        freqs = torch.outer(pos, inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        self.cos = emb.cos().to(device)
        self.sin = emb.sin().to(device)
        self.head_dim = head_dim
        self.rot_dim = rot
        self.in_fp32 = in_fp32

    def __call__(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x: [T, heads, D]; positions: [T] (int64)."""
        if self.rot_dim < self.head_dim:
            rot, rest = x.split([self.rot_dim, self.head_dim - self.rot_dim], dim=-1)
            return torch.cat([self._rotate(rot, positions), rest], dim=-1)
        return self._rotate(x, positions)

    def _rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        cos = self.cos[positions].unsqueeze(1)
        sin = self.sin[positions].unsqueeze(1)
        if self.in_fp32:  # LLaDA: rotate in fp32, cast back
            xf = x.float()
            return (xf * cos + _rotate_half(xf) * sin).to(x.dtype)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # Dream: fp32 tables applied in model dtype
        return x * cos + _rotate_half(x) * sin

    def qk(
        self,
        qkv: torch.Tensor,
        n_heads: int,
        n_kv_heads: int,
        positions: torch.Tensor,
        norms: tuple[torch.Tensor, torch.Tensor, float] | None = None,
        store: KVTarget | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotated q [T, H, D] and k [T, Hkv, D] from the fused projection's leading columns;
        `norms` = (q weight, k weight, eps): each head RMS-normed first (`rms_norm`); `store`:
        k and the v columns after it also written to the given cache entries."""
        hd = self.head_dim
        if _fused(qkv):  # one launch reads the q and k columns once and writes them once
            from dllmserve.kernels.elementwise import rope_heads

            heads = (*norms[:2], n_heads, norms[2]) if norms is not None else None
            qk = rope_heads(
                qkv, n_heads + n_kv_heads, hd, positions, self.cos, self.sin, self.in_fp32, heads,
                store=None if store is None else (*store, n_heads),
            )  # fmt: skip
            return qk[:, :n_heads], qk[:, n_heads:]
        q = qkv[:, : n_heads * hd].view(-1, n_heads, hd)
        k = qkv[:, n_heads * hd : (n_heads + n_kv_heads) * hd].view(-1, n_kv_heads, hd)
        if norms is not None:
            q_w, k_w, eps = norms
            q = rms_norm(q.reshape(-1, hd), q_w, eps).view(q.shape)
            k = rms_norm(k.reshape(-1, hd), k_w, eps).view(k.shape)
        q, k = self(q, positions), self(k, positions)
        if store is not None:
            store_kv(k, qkv[:, (n_heads + n_kv_heads) * hd :].reshape(-1, n_kv_heads, hd), store)
        return q, k


def store_kv(k: torch.Tensor, v: torch.Tensor, target: KVTarget) -> None:
    """Row t of k and v [T, Hkv, D] into entry t of `target`'s pools (the fused RoPE launch
    writes them itself: `Rotary.qk`)."""
    k_pool, v_pool, entries = target
    k_pool.view(-1, *k_pool.shape[2:])[entries] = k
    v_pool.view(-1, *v_pool.shape[2:])[entries] = v


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)
