"""Per-token FP8 (e4m3) quantization of activations, one program per row (the input of an FP8
GEMM; see `dllmserve.models.fp8`). PyTorch reference: `reference.quantize_rows`.

A row's scale is amax(|x|) / 448 (e4m3's largest finite value), floored so an all-zero row keeps
a finite scale. Each value x / scale is rounded to the e4m3 grid in fp32 (round to nearest, ties
to even; subnormals on their own 2^-9 grid) before the cast, so the cast itself is exact: the
kernel writes the same bits as PyTorch's `.to(torch.float8_e4m3fn)` on the GPU and under
TRITON_INTERPRET=1, whose direct float-to-e4m3 cast rounds wrongly at binade boundaries.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .reference import E4M3_MAX, FP8_MIN_SCALE

_MAX_BLOCK = 4096


@triton.jit
def _round_to_e4m3(v, E4M3_MAX: tl.constexpr):
    """v (fp32, |v| <= 448) rounded to the nearest e4m3 value, ties to even, still in fp32."""
    a = tl.abs(v)
    bits = a.to(tl.int32, bitcast=True)
    # normal range: keep 3 of fp32's 23 mantissa bits (add half an ulp, plus one if odd)
    bits = (bits + 0x7FFFF + ((bits >> 20) & 1)) & -1048576
    normal = bits.to(tl.float32, bitcast=True)
    # subnormal range (|v| < 2^-6): a 2^-9 grid; fp32 addition of 2^14 rounds to it exactly
    sub = (a + 16384.0) - 16384.0
    r = tl.minimum(tl.where(a < 0.015625, sub, normal), E4M3_MAX)
    sign = v.to(tl.int32, bitcast=True) & -2147483648  # keeps -0.0 negative, as a cast does
    return (r.to(tl.int32, bitcast=True) | sign).to(tl.float32, bitcast=True)


@triton.jit
def row_scale(amax, E4M3_MAX: tl.constexpr, MIN_SCALE: tl.constexpr):
    """A row's scale from its amax. Divisions here are IEEE (`div_rn`): Triton's plain `/` on
    fp32 is an approximate division on the GPU, which would move values across rounding
    boundaries and make the bits differ from PyTorch's."""
    return tl.maximum(tl.div_rn(amax, E4M3_MAX), MIN_SCALE)


@triton.jit
def quantize(v, scale, E4M3_MAX: tl.constexpr):
    """v / scale on the e4m3 grid, as float8e4nv (its cast is exact)."""
    return _round_to_e4m3(tl.div_rn(v, scale), E4M3_MAX).to(tl.float8e4nv)


@triton.jit
def _quantize_rows_kernel(
    X, Y, S, K, stride_x, stride_y,
    E4M3_MAX: tl.constexpr, MIN_SCALE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    amax = tl.zeros([BLOCK], tl.float32)
    for k in range(0, K, BLOCK):
        m = k + cols < K
        x = tl.load(X + row * stride_x + k + cols, mask=m, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    scale = row_scale(tl.max(amax, axis=0), E4M3_MAX, MIN_SCALE)
    for k in range(0, K, BLOCK):
        m = k + cols < K
        x = tl.load(X + row * stride_x + k + cols, mask=m, other=0.0).to(tl.float32)
        tl.store(Y + row * stride_y + k + cols, quantize(x, scale, E4M3_MAX), mask=m)
    tl.store(S + row, scale)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] (unit stride along K) -> (e4m3 [M, K], fp32 scales [M, 1]), x ≈ q * scale."""
    assert x.dim() == 2 and x.stride(1) == 1, "x must be [M, K] with unit stride along K"
    m, k = x.shape
    q = torch.empty((m, k), dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    if m:
        block = min(triton.next_power_of_2(k), _MAX_BLOCK)
        _quantize_rows_kernel[(m,)](
            x, q, scale, k, x.stride(0), q.stride(0),
            E4M3_MAX=E4M3_MAX, MIN_SCALE=FP8_MIN_SCALE, BLOCK=block,
        )  # fmt: skip
    return q, scale
