"""y = x @ W.T for few rows (M <= 64: the REUSE and decode steps), split over K so a weight
streams through every SM. PyTorch reference: `skinny_linear_reference` in
tests/kernels/test_skinny_gemm.py (the fp32 product of the dequantized operands).

Three operand kinds, one kernel: 16-bit x and W ("16bit"; fp32 too, for the interpreter and
tiny models); 16-bit x and e4m3 W with one fp32 scale per output row ("w8": W is converted to
x's dtype in registers, so only its bytes are halved); e4m3 x with per-token scales and e4m3 W
("w8a8": the operands `dllmserve.models.fp8.fp8_linear` gives `torch._scaled_mm`). Products
accumulate in fp32; the scales (token's, then row's), then the bias, are applied to the fp32
sum, which is rounded once to the output dtype.

A program owns BLOCK_N output columns of every row and one K range of `k_split` columns. With
one split it writes y; with several, each split writes its fp32 partial sums to a workspace
and a second kernel adds them in split order (no atomics: the result does not depend on which
program finishes first). A row's result depends only on that row and the config, never on
the other rows: the config is chosen per row bucket (`bucket`), so rows are batch invariant
within one.

`tune` times the candidate configs (`candidates`) on the real operands and keeps the fastest
per (bucket, N, K, kind) in `TUNED`; `skinny_linear` uses it, else `default_config`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

from ._common import dot_precision, num_sms, rows

MAX_ROWS = 64
"""Rows the kernel takes at most: past this, cuBLAS's tensor-core tiles are the better GEMM."""

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_FP8 = torch.float8_e4m3fn
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class SkinnyConfig:
    block_n: int
    block_k: int
    split_k: int
    num_warps: int = 4
    num_stages: int = 4


TUNED: dict[tuple[int, int, int, str], SkinnyConfig] = {}
"""The fastest config found by `tune`, per (row bucket, N, K, kind)."""


def bucket(m: int) -> int:
    """The row tile of m rows (tl.dot needs at least 16): 16, 32 or 64."""
    return max(16, triton.next_power_of_2(m))


def kind_of(x: torch.Tensor, w: torch.Tensor) -> str:
    if w.dtype != _FP8:
        return "16bit"
    return "w8a8" if x.dtype == _FP8 else "w8"


@triton.jit
def _epilogue(acc, m, n, m_ok, n_ok, SX, SW, B, X_SCALED: tl.constexpr,
              W_SCALED: tl.constexpr, HAS_BIAS: tl.constexpr):  # fmt: skip
    """The fp32 sum times the token's and the row's scales, plus the bias."""
    if X_SCALED:
        acc = acc * tl.load(SX + m, mask=m_ok, other=0.0)[:, None]
    if W_SCALED:
        acc = acc * tl.load(SW + n, mask=n_ok, other=0.0)[None, :]
    if HAS_BIAS:
        acc = acc + tl.load(B + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit(do_not_specialize=["M", "n_splits"])  # one compile for every row count
def _skinny_kernel(
    X, W, Y, WS, SX, SW, B, M, N, K, k_split, n_splits, stride_x, stride_w, stride_y,
    X_SCALED: tl.constexpr, W_SCALED: tl.constexpr, HAS_BIAS: tl.constexpr,
    PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    m = tl.arange(0, BLOCK_M)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = m < M, n < N
    kk = tl.arange(0, BLOCK_K)
    start = split * k_split
    x_ptrs = X + m[:, None].to(tl.int64) * stride_x + (start + kk)[None, :]
    w_ptrs = W + n[None, :].to(tl.int64) * stride_w + (start + kk)[:, None]  # [BLOCK_K, BLOCK_N]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k in range(start, tl.minimum(start + k_split, K), BLOCK_K):
        k_ok = k + kk < K
        x = tl.load(x_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        if X_SCALED:  # both e4m3: each K step summed in fresh fp32 (Hopper's FP8 accumulator
            # is narrower), as in kernels/moe_kernel.py
            acc = tl.dot(x, w, acc, max_num_imprecise_acc=BLOCK_K)
        else:
            acc = tl.dot(x, w.to(x.dtype), acc, input_precision=PREC)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    mask = m_ok[:, None] & n_ok[None, :]
    if n_splits == 1:
        acc = _epilogue(acc, m, n, m_ok, n_ok, SX, SW, B, X_SCALED, W_SCALED, HAS_BIAS)
        y_ptrs = Y + m[:, None].to(tl.int64) * stride_y + n[None, :]
        tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=mask)
    else:
        ws_ptrs = WS + (split * M + m[:, None]).to(tl.int64) * N + n[None, :]
        tl.store(ws_ptrs, acc, mask=mask)


@triton.jit(do_not_specialize=["M", "n_splits"])
def _reduce_kernel(
    WS, Y, SX, SW, B, M, N, n_splits, stride_y,
    X_SCALED: tl.constexpr, W_SCALED: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """y = epilogue(sum of the splits' partials, in split order)."""
    m = tl.arange(0, BLOCK_M)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = m < M, n < N
    mask = m_ok[:, None] & n_ok[None, :]
    ptrs = WS + m[:, None].to(tl.int64) * N + n[None, :]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for s in range(0, n_splits):
        acc += tl.load(ptrs + s * M * N, mask=mask, other=0.0)
    acc = _epilogue(acc, m, n, m_ok, n_ok, SX, SW, B, X_SCALED, W_SCALED, HAS_BIAS)
    tl.store(Y + m[:, None].to(tl.int64) * stride_y + n[None, :], acc.to(Y.dtype.element_ty),
             mask=mask)  # fmt: skip


def _check(x, w, bias, x_scale, w_scale, out_dtype) -> None:
    """Shapes, dtypes and devices (ValueError naming the argument)."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"skinny_linear: {what}")

    need(x.dim() == 2 and 1 <= x.shape[0] <= MAX_ROWS, f"x must be [M, K], 1 <= M <= {MAX_ROWS}")
    m, k = x.shape
    need(w.dim() == 2 and w.shape[1] == k, f"w must be [N, K={k}], got {tuple(w.shape)}")
    n = w.shape[0]
    need(x.dtype in (*_FLOATS, _FP8), f"x must be fp32/fp16/bf16/e4m3, got {x.dtype}")
    need(w.dtype in (x.dtype, _FP8), f"w must be {x.dtype} or e4m3, got {w.dtype}")
    need((x.dtype == _FP8) == (x_scale is not None), "x_scale goes with, and only with, e4m3 x")
    need((w.dtype == _FP8) == (w_scale is not None), "w_scale goes with, and only with, e4m3 w")
    need(x.dtype != _FP8 or w.dtype == _FP8, "e4m3 x needs e4m3 w")
    need(out_dtype in _FLOATS, f"the output dtype must be fp32/fp16/bf16, got {out_dtype}")
    if x_scale is not None:
        need(x_scale.numel() == m and x_scale.dtype == torch.float32, f"x_scale: {m} fp32")
    if w_scale is not None:
        need(w_scale.numel() == n and w_scale.dtype == torch.float32, f"w_scale: {n} fp32")
    if bias is not None:
        need(bias.shape == (n,), f"bias must be [{n}], got {tuple(bias.shape)}")
    others = [t for t in (w, bias, x_scale, w_scale) if t is not None]
    need(all(t.device == x.device for t in others), f"every tensor on x's device ({x.device})")


def skinny_linear(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    x_scale: torch.Tensor | None = None,
    w_scale: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    config: SkinnyConfig | None = None,
) -> torch.Tensor:
    """(x * x_scale) @ (w * w_scale[:, None]).T + bias for x [M <= 64, K]; w [N, K] in x's
    dtype, or e4m3 with w_scale (N fp32); e4m3 x needs x_scale (M fp32, one per token) and
    out_dtype. The result [M, N] is in out_dtype (default: x's dtype). `config`: default the
    tuned one for this shape (`tune`), else `default_config`."""
    out_dtype = out_dtype or x.dtype
    _check(x, w, bias, x_scale, w_scale, out_dtype)
    x, w = rows(x), rows(w)
    m, k = x.shape
    n = w.shape[0]
    cfg = config or TUNED.get((bucket(m), n, k, kind_of(x, w))) or default_config(m, n, k, x.device)
    y = torch.empty((m, n), dtype=out_dtype, device=x.device)
    k_split = triton.cdiv(triton.cdiv(k, cfg.block_k), cfg.split_k) * cfg.block_k
    n_splits = triton.cdiv(k, k_split)
    ws = torch.empty((n_splits, m, n), dtype=torch.float32, device=x.device) if n_splits > 1 else y
    sx = x_scale.reshape(-1) if x_scale is not None else y
    sw = w_scale.reshape(-1) if w_scale is not None else y
    b = bias if bias is not None else y
    flags = {"X_SCALED": x_scale is not None, "W_SCALED": w_scale is not None,
             "HAS_BIAS": bias is not None}  # fmt: skip
    bm = bucket(m)
    grid = (triton.cdiv(n, cfg.block_n), n_splits)
    _skinny_kernel[grid](
        x, w, y, ws, sx, sw, b, m, n, k, k_split, n_splits, x.stride(0), w.stride(0), y.stride(0),
        **flags, PREC=dot_precision(x.dtype), BLOCK_M=bm, BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    if n_splits > 1:
        block_n = max(16, min(128, 4096 // bm))
        _reduce_kernel[(triton.cdiv(n, block_n),)](
            ws, y, sx, sw, b, m, n, n_splits, y.stride(0), **flags, BLOCK_M=bm, BLOCK_N=block_n
        )
    return y


def _tiles(fp8_w: bool) -> list[tuple[int, int, int, int]]:
    """(BLOCK_N, BLOCK_K, warps, stages) to try: memory-bound tiles, wide K steps and deep
    pipelines; an e4m3 weight's K step is twice as long for the same bytes."""
    s = 2 if fp8_w else 1
    return [
        (64, 128 * s, 4, 4),
        (32, 128 * s, 4, 5),
        (128, 64 * s, 4, 4),
        (64, 64 * s, 4, 6),
        (128, 128 * s, 8, 3),
    ]


def candidates(n: int, k: int, fp8_w: bool, sms: int) -> list[SkinnyConfig]:
    """The configs `tune` times on a device of `sms` SMs: each tile with every split of K that
    gives between half and eight times as many programs as SMs (one split if none does)."""
    out = []
    for bn, bk, warps, stages in _tiles(fp8_w):
        tiles = triton.cdiv(n, bn)
        steps = triton.cdiv(k, bk)
        splits = [s for s in (1, 2, 3, 4, 6, 8, 12, 16) if s <= steps // 2 or s == 1]
        fit = [s for s in splits if sms // 2 <= tiles * s <= 8 * sms] or [1]
        out += [SkinnyConfig(bn, bk, s, warps, stages) for s in fit]
    return out


def default_config(m: int, n: int, k: int, device: torch.device) -> SkinnyConfig:
    """Untuned: 64-column tiles and enough K splits to give every SM about two programs."""
    if _INTERPRET or device.type != "cuda":
        return SkinnyConfig(16, 32, 1, 4, 2)
    tiles = triton.cdiv(n, 64)
    split = max(1, min(triton.cdiv(k, 128) // 2, triton.cdiv(2 * num_sms(device), tiles)))
    return SkinnyConfig(64, 128, split)


def median_ms(fn: Callable[[], object], reps: int, flush: torch.Tensor) -> float:
    """Median milliseconds of `fn` (CUDA) replayed from a CUDA graph (no launch overhead in
    the time), each replay after `flush` is zeroed (the L2 evicted: weights come from HBM)."""
    fn()  # compiles, outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    times = []
    for _ in range(reps):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def l2_flush(device: torch.device) -> torch.Tensor:
    """A buffer of twice the device's L2 cache: zeroing it evicts the cache."""
    size = torch.cuda.get_device_properties(device).L2_cache_size
    return torch.empty(2 * size, dtype=torch.uint8, device=device)


def tune(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    x_scale: torch.Tensor | None = None,
    w_scale: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    reps: int = 5,
    flush: torch.Tensor | None = None,
) -> tuple[SkinnyConfig, float]:
    """Time every candidate on these operands (CUDA), keep the fastest in TUNED for their
    (bucket, N, K, kind), and return it with its median time (ms). The operands should have
    the bucket's full row count, the slowest of the bucket's shapes."""
    m, k = x.shape
    n = w.shape[0]
    flush = flush if flush is not None else l2_flush(x.device)
    kw = {"x_scale": x_scale, "w_scale": w_scale, "out_dtype": out_dtype}
    timed = {}
    for cfg in candidates(n, k, w.dtype == _FP8, num_sms(x.device)):
        try:
            run = functools.partial(skinny_linear, x, w, bias, config=cfg, **kw)
            timed[cfg] = median_ms(run, reps, flush)
        except OutOfResources:  # a tile whose pipeline does not fit this card's shared memory
            continue
    best = min(timed, key=timed.__getitem__)
    TUNED[(bucket(m), n, k, kind_of(x, w))] = best
    return best, timed[best]
