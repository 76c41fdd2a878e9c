"""Fused mixture-of-experts MLP: tokens sorted by expert, two grouped GEMMs, a fixed-order sum.

Row p = t * k + j of the routing stands for token t's j-th expert. `align_rows` (`moe_align`)
sorts the rows by expert (a counting sort, no host sync: the grid is an upper bound, so it can
be captured in a CUDA graph) and pads each expert's rows to a multiple of BLOCK_M;
every M-block of the padded order then belongs to one expert. The gate/up GEMM gathers the
rows' tokens, multiplies them by their expert's gate and up rows in one program (two
accumulators) and writes silu(gate) * up; the down GEMM multiplies that by the expert's down
rows and the row's routing weight into a [T, k, d] buffer, which `_combine` sums over j in
order. No atomics: a token's result does not depend on the other tokens of its batch for a
given tile choice.

Rounding: both GEMMs accumulate in fp32; silu(gate) * up is computed in fp32 and rounded once to
the model dtype (the down GEMM's input); each row's weighted down product is rounded to the
model dtype; the k contributions are summed in fp32 (j = 0..k-1) and rounded once.

FP8 (scales given): e4m3 weights with one fp32 scale per output row; x is quantized per token
and the intermediate per row (`fp8_quant`, the bits of `reference.quantize_rows`), the products
run FP8 x FP8 with each K step's sum added to an fp32 accumulator (Hopper's FP8 accumulator is
narrower; cuBLAS without fast accumulation does the same), and both scales are applied in the
epilogue. Reference:
`reference.fused_moe`.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from ._common import dot_precision, require, rows
from .fp8_quant import quantize_rows
from .moe_align import align_rows

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def block_m_for(n_rows: int, n_experts: int) -> int:
    """The M tile (and the padding of each expert's rows): about the rows an expert gets on
    average, so a decode step (a few rows per expert) wastes little on padding and a large
    batch gets tensor-core-sized tiles."""
    avg = n_rows / n_experts
    return 16 if avg <= 16 else 32 if avg <= 48 else 64 if avg <= 192 else 128


@triton.jit
def _load(ptrs, row_ok, col_ok, MASK_ROWS: tl.constexpr, MASK_COLS: tl.constexpr):
    """A tile load, masked only along the dims that have padding (unmasked loads vectorise)."""
    if MASK_ROWS and MASK_COLS:
        return tl.load(ptrs, mask=row_ok[:, None] & col_ok[None, :], other=0.0)
    elif MASK_ROWS:
        return tl.load(ptrs, mask=row_ok[:, None], other=0.0)
    elif MASK_COLS:
        return tl.load(ptrs, mask=col_ok[None, :], other=0.0)
    else:
        return tl.load(ptrs)


@triton.jit
def _mma(a, b, acc, FP8: tl.constexpr, PREC: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc + a @ b; FP8 products are summed in a fresh fp32 register tile per K step and then
    added to acc (Hopper's FP8 accumulator is narrower than fp32)."""
    if FP8:
        return tl.dot(a, b, acc, max_num_imprecise_acc=BLOCK_K)
    return tl.dot(a, b, acc, input_precision=PREC)


@triton.jit
def _gate_up_kernel(
    X, XS, W, WS, H, ROWS, BLOCK_EXPERT, n_rows, topk, N, K,
    stride_x, stride_we, stride_wn, stride_se, stride_h,
    FP8: tl.constexpr, PREC: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr, EVEN_N: tl.constexpr,
):  # fmt: skip
    """H[p, n] = silu(x_t . Wg[e, n]) * (x_t . Wu[e, n]) for the M-block's rows p (token
    t = p // topk) of expert e, columns n of this program's N-tile."""
    pid_m = tl.program_id(0)
    e = tl.load(BLOCK_EXPERT + pid_m)
    if e < 0:
        return
    p = tl.load(ROWS + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
    ok = p < n_rows
    tok = tl.where(ok, p // topk, 0).to(tl.int64)  # padding reads token 0, never stored
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    kk = tl.arange(0, BLOCK_K)
    a_ptrs = X + tok[:, None] * stride_x + kk[None, :]
    g_ptrs = W + e.to(tl.int64) * stride_we + n[None, :].to(tl.int64) * stride_wn + kk[:, None]
    u_ptrs = g_ptrs + N * stride_wn
    acc_g = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = kk < K - k0
        a = _load(a_ptrs, ok, k_ok, False, not EVEN_K)
        bg = _load(g_ptrs, k_ok, n_ok, not EVEN_K, not EVEN_N)
        bu = _load(u_ptrs, k_ok, n_ok, not EVEN_K, not EVEN_N)
        acc_g = _mma(a, bg, acc_g, FP8, PREC, BLOCK_K)
        acc_u = _mma(a, bu, acc_u, FP8, PREC, BLOCK_K)
        a_ptrs += BLOCK_K
        g_ptrs += BLOCK_K
        u_ptrs += BLOCK_K
    if FP8:
        xs = tl.load(XS + tok)[:, None]
        s_ptrs = WS + e.to(tl.int64) * stride_se + n
        acc_g = acc_g * xs * tl.load(s_ptrs, mask=n_ok, other=0.0)[None, :]
        acc_u = acc_u * xs * tl.load(s_ptrs + N, mask=n_ok, other=0.0)[None, :]
    h = acc_g / (1.0 + tl.exp(-acc_g)) * acc_u
    h_ptrs = H + p[:, None].to(tl.int64) * stride_h + n[None, :]
    tl.store(h_ptrs, h.to(H.dtype.element_ty), mask=ok[:, None] & n_ok[None, :])


@triton.jit
def _down_kernel(
    A, AS, W, WS, TW, Y, ROWS, BLOCK_EXPERT, n_rows, N, K,
    stride_a, stride_we, stride_wn, stride_se, stride_y,
    FP8: tl.constexpr, PREC: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr, EVEN_N: tl.constexpr,
):  # fmt: skip
    """Y[p, n] = w_p * (h_p . Wd[e, n]) for the M-block's rows p of expert e."""
    pid_m = tl.program_id(0)
    e = tl.load(BLOCK_EXPERT + pid_m)
    if e < 0:
        return
    p = tl.load(ROWS + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
    ok = p < n_rows
    row = tl.where(ok, p, 0).to(tl.int64)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    kk = tl.arange(0, BLOCK_K)
    a_ptrs = A + row[:, None] * stride_a + kk[None, :]
    b_ptrs = W + e.to(tl.int64) * stride_we + n[None, :].to(tl.int64) * stride_wn + kk[:, None]
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = kk < K - k0
        a = _load(a_ptrs, ok, k_ok, False, not EVEN_K)
        b = _load(b_ptrs, k_ok, n_ok, not EVEN_K, not EVEN_N)
        acc = _mma(a, b, acc, FP8, PREC, BLOCK_K)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    if FP8:
        ws = tl.load(WS + e.to(tl.int64) * stride_se + n, mask=n_ok, other=0.0)
        acc = acc * tl.load(AS + row)[:, None] * ws[None, :]
    acc = acc * tl.load(TW + row)[:, None]
    y_ptrs = Y + p[:, None].to(tl.int64) * stride_y + n[None, :]
    tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=ok[:, None] & n_ok[None, :])


@triton.jit
def _combine(Y, Out, topk, D, stride_y, stride_o, BLOCK: tl.constexpr):
    """Out[t] = sum over j = 0..k-1 of Y[t * k + j], in fp32, in that order."""
    t = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = c < D
    acc = tl.zeros([BLOCK], tl.float32)
    for j in range(0, topk):
        acc += tl.load(Y + (t * topk + j) * stride_y + c, mask=m, other=0.0).to(tl.float32)
    tl.store(Out + t * stride_o + c, acc.to(Out.dtype.element_ty), mask=m)


def _configs(block_m: int, fp8: bool) -> list[triton.Config]:
    """A small search space: memory-bound skinny tiles (a few rows per expert: wide K steps,
    deep pipelines, many programs) or Hopper tensor-core tiles for large batches. FP8 halves
    the bytes of a K step, so its steps are twice as long."""
    s = 2 if fp8 else 1
    if block_m <= 32:
        tiles = [(64, 128 * s, 4, 4), (128, 64 * s, 4, 4), (32, 128 * s, 4, 5), (64, 64 * s, 4, 6)]
    elif block_m == 64:
        tiles = [(128, 64 * s, 4, 4), (128, 64 * s, 8, 3), (64, 64 * s, 4, 4), (256, 64 * s, 8, 3)]
    else:  # 128 rows: 8 warps keep gate/up's two accumulators in registers
        tiles = [(128, 64 * s, 8, 3), (128, 64 * s, 8, 4), (64, 64 * s, 4, 4), (64, 64 * s, 8, 4)]
    return [
        triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=st)
        for n, k, w, st in tiles
    ]


_EVEN = {
    "EVEN_K": lambda a: a["K"] % a["BLOCK_K"] == 0,
    "EVEN_N": lambda a: a["N"] % a["BLOCK_N"] == 0,
}
_TUNERS: dict[tuple[str, int, str], triton.runtime.Autotuner] = {}


def _launch(kernel, grid_m: int, n: int, block_m: int, mode: str, *args) -> None:
    """Run `kernel` over grid_m M-blocks and the N-tiles of n columns. mode "fp8" or "16bit":
    autotuned per (N, K) (the first call of a shape benchmarks its configs, so warm up before
    capturing a CUDA graph); "fp32" (tests, tiny models): one small tile, fixed; under the
    interpreter, one tile small enough to test ragged edges cheaply."""
    if _INTERPRET or mode == "fp32":
        tile = {"BLOCK_N": 16, "BLOCK_K": 32} if _INTERPRET else {"BLOCK_N": 32, "BLOCK_K": 32}
        jit = triton.heuristics(_EVEN)(kernel)
        jit[(grid_m, triton.cdiv(n, tile["BLOCK_N"]))](*args, **tile, num_warps=4, num_stages=2)
        return
    key = (kernel.__name__, block_m, mode)
    if key not in _TUNERS:
        heur = triton.heuristics(_EVEN)(kernel)
        _TUNERS[key] = triton.autotune(_configs(block_m, mode == "fp8"), key=["N", "K"])(heur)
    _TUNERS[key][lambda meta: (grid_m, triton.cdiv(n, meta["BLOCK_N"]))](*args)


_require = functools.partial(require, "fused_moe")


def _check(x, w_gate_up, w_down, topk_ids, topk_weights, s_gate_up, s_down) -> bool:
    """Shape, dtype and device checks (ValueError naming the argument); True for FP8."""
    floats = (torch.float32, torch.float16, torch.bfloat16)
    _require(x.dim() == 2 and x.dtype in floats, "x", "[T, d] fp32/fp16/bf16", x)
    t, d = x.shape
    gu_ok = w_gate_up.dim() == 3 and w_gate_up.shape[2] == d and w_gate_up.shape[1] % 2 == 0
    _require(gu_ok, "w_gate_up", f"[E, 2*I, d={d}]", w_gate_up)
    e, i = w_gate_up.shape[0], w_gate_up.shape[1] // 2
    _require(tuple(w_down.shape) == (e, d, i), "w_down", f"[E, d, I] = {(e, d, i)}", w_down)
    ids_ok = topk_ids.dtype == torch.int32 and topk_ids.dim() == 2 and topk_ids.shape[0] == t
    _require(ids_ok, "topk_ids", f"[T={t}, k] int32", topk_ids)
    tw_ok = topk_weights.dtype == torch.float32 and topk_weights.shape == topk_ids.shape
    _require(
        tw_ok, "topk_weights", f"fp32 of topk_ids' shape {tuple(topk_ids.shape)}", topk_weights
    )
    if (s_gate_up is None) != (s_down is None):
        raise ValueError("fused_moe: give both w_gate_up_scale and w_down_scale, or neither")
    fp8 = s_gate_up is not None
    w_dtype = torch.float8_e4m3fn if fp8 else x.dtype
    _require(w_gate_up.dtype == w_dtype, "w_gate_up", f"{w_dtype}", w_gate_up)
    _require(w_down.dtype == w_dtype, "w_down", f"{w_dtype}", w_down)
    if fp8:
        f32 = torch.float32
        ok = tuple(s_gate_up.shape) == (e, 2 * i) and s_gate_up.dtype == f32
        _require(ok, "w_gate_up_scale", f"fp32 [E, 2*I] = {(e, 2 * i)}", s_gate_up)
        ok = tuple(s_down.shape) == (e, d) and s_down.dtype == f32
        _require(ok, "w_down_scale", f"fp32 [E, d] = {(e, d)}", s_down)
    tensors = [w_gate_up, w_down, topk_ids, topk_weights] + ([s_gate_up, s_down] if fp8 else [])
    if any(u.device != x.device for u in tensors):
        raise ValueError(f"fused_moe: every tensor must be on x's device ({x.device})")
    return fp8


def _check_rows(x: torch.Tensor, x_fp8: tuple[torch.Tensor, torch.Tensor], fp8: bool) -> None:
    """x_fp8 must be x's per-row quantization for FP8 weights: (e4m3 [T, d], fp32 [T, 1])."""
    if not fp8:
        raise ValueError("fused_moe: x_fp8 is for FP8 weights (give w_gate_up_scale)")
    data, scale = x_fp8
    ok = data.shape == x.shape and data.dtype == torch.float8_e4m3fn and data.device == x.device
    _require(ok, "x_fp8", f"(e4m3 {tuple(x.shape)}, fp32 [T, 1]) on x's device", data)
    ok = tuple(scale.shape) == (x.shape[0], 1) and scale.dtype == torch.float32
    _require(ok and scale.device == x.device, "x_fp8", f"scales fp32 [{x.shape[0]}, 1]", scale)


def fused_moe(
    x: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    *,
    w_gate_up_scale: torch.Tensor | None = None,
    w_down_scale: torch.Tensor | None = None,
    x_fp8: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """out[t] = sum_j topk_weights[t, j] * down_e(silu(gate_e x_t) * up_e x_t), e = topk_ids[t, j]
    (x [T, d]; w_gate_up [E, 2I, d]: I gate rows then I up rows; w_down [E, d, I]); the ids must
    lie in [0, E) (not checked: that would sync with the host). Returns [T, d] in x's dtype.
    `x_fp8`: `quantize_rows(x)` made already (FP8 weights only), used instead of quantizing x."""
    fp8 = _check(x, w_gate_up, w_down, topk_ids, topk_weights, w_gate_up_scale, w_down_scale)
    if x_fp8 is not None:
        _check_rows(x, x_fp8, fp8)
    t, d = x.shape
    n_exp, i = w_gate_up.shape[0], w_gate_up.shape[1] // 2
    k = topk_ids.shape[1]
    out = torch.empty((t, d), dtype=x.dtype, device=x.device)
    if t == 0 or k == 0:
        return out.zero_()
    n = t * k
    bm = block_m_for(n, n_exp)
    row_ids, block_expert = align_rows(topk_ids, n_exp, bm)
    grid_m = block_expert.numel()
    x, w_gate_up, w_down = rows(x), rows(w_gate_up), rows(w_down)
    s_gu = rows(w_gate_up_scale) if fp8 else x
    s_d = rows(w_down_scale) if fp8 else x
    if not fp8:
        xa, xs = x, x
    else:  # the scales are read one per row: [T, 1] contiguous
        xa, xs = (rows(x_fp8[0]), x_fp8[1].contiguous()) if x_fp8 else quantize_rows(x)
    prec = dot_precision(x.dtype)
    mode = "fp8" if fp8 else "fp32" if x.dtype == torch.float32 else "16bit"
    h = torch.empty((n, i), dtype=x.dtype, device=x.device)
    _launch(
        _gate_up_kernel, grid_m, i, bm, mode,
        xa, xs, w_gate_up, s_gu, h, row_ids, block_expert, n, k, i, d,
        xa.stride(0), w_gate_up.stride(0), w_gate_up.stride(1), s_gu.stride(0), h.stride(0),
        fp8, prec, bm,
    )  # fmt: skip
    ha, hs = quantize_rows(h) if fp8 else (h, h)
    y = torch.empty((n, d), dtype=x.dtype, device=x.device)
    weights = topk_weights.contiguous().view(-1)
    _launch(
        _down_kernel, grid_m, d, bm, mode,
        ha, hs, w_down, s_d, weights, y, row_ids, block_expert, n, d, i,
        ha.stride(0), w_down.stride(0), w_down.stride(1), s_d.stride(0), y.stride(0),
        fp8, prec, bm,
    )  # fmt: skip
    block = min(1024, triton.next_power_of_2(d))
    _combine[(t, triton.cdiv(d, block))](y, out, k, d, y.stride(0), out.stride(0), BLOCK=block)
    return out
