"""The GEMM of a linear layer with few rows on the GPU: the library's (cuBLAS's `F.linear`, or
`fp8_linear`'s `torch._scaled_mm`) or the skinny Triton kernel (`kernels/skinny_gemm.py`),
whichever was faster when this shape was first met on this device.

At batch 1 a REUSE step's GEMMs have 32 rows, where the library reaches 74-93 % (bf16) and
25-53 % (FP8) of the weights' byte floor (benchmarks/RESULTS.md). Per (row bucket, N, K, kind)
the first eager call tunes the kernel and times the library on random operands of the bucket's
full row count, each with the L2 evicted, and the answer is kept for the process. A shape first
met inside a CUDA-graph capture (nothing can be timed there) keeps the library. FP8 stays W8A8:
the kernel takes the same per-token quantized activations as `_scaled_mm`.

Rows stay independent of one another within a bucket (the kernel's config is the bucket's),
but a batch that crosses a bucket changes which GEMM, and so which rounding, a row gets, as
cuBLAS's own choice of kernel by M does: results on the GPU are not batch invariant either way
(the CPU, where they are, never uses this).
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F

from dllmserve.models.fp8 import Fp8Rows, Fp8Weight, fp8_linear

log = logging.getLogger(__name__)

enabled = False
"""Set by the engine from `EngineConfig.skinny_gemm` (one setting a process)."""

FASTER: dict[tuple[int, int, int, str], bool] = {}
"""Per (row bucket, N, K, kind): whether the kernel beat the library when measured."""

_DTYPES = (torch.bfloat16, torch.float16)


def gpu_linear(
    x: torch.Tensor | Fp8Rows, w: torch.Tensor | Fp8Weight, b: torch.Tensor | None = None
) -> torch.Tensor:
    """x @ w.T + b on the GPU by the faster GEMM for this shape (the library's unless
    enabled, past the kernel's row limit, or in fp32)."""
    fp8 = isinstance(w, Fp8Weight)
    if not enabled or x.dtype not in _DTYPES:
        return _library(x, w, b)
    from dllmserve.kernels import skinny_gemm as sg

    m = (x.data if isinstance(x, Fp8Rows) else x).shape[0]
    if not 1 <= m <= sg.MAX_ROWS:
        return _library(x, w, b)
    key = (sg.bucket(m), *w.shape, "w8a8" if fp8 else "16bit")
    if key not in FASTER:
        capturing = torch.cuda.is_current_stream_capturing()
        FASTER[key] = not capturing and _measure(key, w, b, x.dtype, x.device)
    return _kernel(x, w, b) if FASTER[key] else _library(x, w, b)


def _library(x: torch.Tensor | Fp8Rows, w: torch.Tensor | Fp8Weight, b) -> torch.Tensor:
    return fp8_linear(x, w, b) if isinstance(w, Fp8Weight) else F.linear(x, w, b)


def _kernel(x: torch.Tensor | Fp8Rows, w: torch.Tensor | Fp8Weight, b) -> torch.Tensor:
    from dllmserve.kernels.skinny_gemm import skinny_linear

    if not isinstance(w, Fp8Weight):
        return skinny_linear(x, w, b)
    r = x if isinstance(x, Fp8Rows) else Fp8Rows.of(x)
    return skinny_linear(r.data, w.data, b, x_scale=r.scale, w_scale=w.scale, out_dtype=r.dtype)


def _measure(
    key: tuple, w: torch.Tensor | Fp8Weight, b, dtype: torch.dtype, device: torch.device
) -> bool:
    """Tune the kernel for `key` and time the library on the same random operands."""
    from dllmserve.kernels import skinny_gemm as sg

    rows, _, k, _ = key
    x = torch.randn(rows, k, device=device, dtype=dtype)
    probe = Fp8Rows.of(x) if isinstance(w, Fp8Weight) else x
    flush = sg.l2_flush(device)
    if isinstance(w, Fp8Weight):
        kw = {"x_scale": probe.scale, "w_scale": w.scale, "out_dtype": dtype}
        _, kernel_ms = sg.tune(probe.data, w.data, b, flush=flush, **kw)
    else:
        _, kernel_ms = sg.tune(x, w, b, flush=flush)
    library_ms = sg.median_ms(functools.partial(_library, probe, w, b), 5, flush)
    log.info("GEMM %s: skinny kernel %.4f ms, library %.4f ms", key, kernel_ms, library_ms)
    return kernel_ms < library_ms
