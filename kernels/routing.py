"""MoE routing in one launch: one program per token holds all E router logits in registers and
does the whole router after the router GEMM (scores, bias, group choice, top-k, weights).

The torch routers of `dllmserve.models.moe` take about 13 launches a layer, two to four of them
torch.topk's sort kernels; a block-diffusion decode step runs them for every MoE layer.
Top-k is k rounds of argmax (the lowest expert id among equal scores), so the experts come in
descending score, ties by ascending id, and the group step keeps groups the same way; the
logits are laid out as a [group, expert-in-group] tile (one group for the softmax router).
Reference: ``reference.route_experts`` (ids equal; weights within a few fp32 ulps, the
exp and the sums being computed in another order).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from .reference import check_route_args

_ROUND = {None: 0, torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


@triton.jit
def _argmax(x, ids, BIG: tl.constexpr):
    """The largest value of x and the lowest of its ids among equals."""
    best = tl.max(x)
    return best, tl.min(tl.where(x == best, ids, BIG))


@triton.jit
def _exp(x, LIBDEVICE: tl.constexpr):
    """libdevice's expf on CUDA, as torch's kernels (tl.exp is the approximate PTX ex2 there),
    so near-equal scores are ordered as the reference orders them."""
    if LIBDEVICE:
        return libdevice.exp(x)
    return tl.exp(x)


@triton.jit
def _keep_best_groups(biased, eid, gid, N_GROUP: tl.constexpr, TOPK_GROUP: tl.constexpr):
    """biased [G, S] with -inf outside the TOPK_GROUP groups whose two best values sum highest."""
    big: tl.constexpr = 1 << 30
    m1 = tl.max(biased, axis=1)
    j1 = tl.min(tl.where(biased == m1[:, None], eid, big), axis=1)
    m2 = tl.max(tl.where(eid == j1[:, None], -float("inf"), biased), axis=1)
    score = tl.where(gid < N_GROUP, m1 + m2, -float("inf"))
    keep = gid < 0
    for _ in tl.static_range(TOPK_GROUP):
        _, i = _argmax(score, gid, big)
        keep = keep | (gid == i)
        score = tl.where(gid == i, -float("inf"), score)
    return tl.where(keep[:, None], biased, -float("inf"))


@triton.jit
def _round_weights(w, ROUND: tl.constexpr):
    """fp32 weights rounded to fp16 (1) or bf16 (2), nearest even, and back. bf16 by its bits:
    the interpreter's fp32 -> bf16 cast does not round to nearest."""
    if ROUND == 1:
        w = w.to(tl.float16).to(tl.float32)
    elif ROUND == 2:
        bits = w.to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
        w = bits.to(tl.float32, bitcast=True)
    return w


@triton.jit
def _route_kernel(
    L, BIAS, IDS, W, stride_l, routed_scaling,
    GROUPED: tl.constexpr, HAS_BIAS: tl.constexpr, K: tl.constexpr, K_PAD: tl.constexpr,
    N_GROUP: tl.constexpr, TOPK_GROUP: tl.constexpr, S: tl.constexpr,
    G_PAD: tl.constexpr, S_PAD: tl.constexpr, ROUND: tl.constexpr, LIBDEVICE: tl.constexpr,
):  # fmt: skip
    t = tl.program_id(0).to(tl.int64)
    gid = tl.arange(0, G_PAD)
    g = gid[:, None]
    j = tl.arange(0, S_PAD)[None, :]
    valid = (g < N_GROUP) & (j < S)
    eid = tl.where(valid, g * S + j, (1 << 29) + g * S_PAD + j)  # padding: unique, after E
    x = tl.load(L + t * stride_l + eid, mask=valid, other=0.0)
    if GROUPED:
        score = tl.div_rn(1.0, 1.0 + _exp(-x, LIBDEVICE))
    else:
        p = tl.where(valid, _exp(x - tl.max(tl.where(valid, x, -float("inf"))), LIBDEVICE), 0.0)
        score = tl.div_rn(p, tl.sum(p))
    biased = score
    if HAS_BIAS:
        biased += tl.load(BIAS + eid, mask=valid, other=0.0).to(tl.float32)
    # padding and NaN are never chosen before a number, so the ids stay in [0, E)
    biased = tl.where(valid & (biased == biased), biased, -float("inf"))
    if GROUPED:
        biased = _keep_best_groups(biased, eid, gid, N_GROUP, TOPK_GROUP)
    kk = tl.arange(0, K_PAD)
    ids = tl.zeros([K_PAD], tl.int32)
    w = tl.zeros([K_PAD], tl.float32)
    for r in tl.static_range(K):
        best, i = _argmax(biased, eid, 1 << 30)
        hit = eid == i
        if GROUPED:  # LLaDA2 weighs by the unbiased score
            best = tl.max(tl.where(hit, score, -float("inf")))
        ids = tl.where(kk == r, i, ids)
        w = tl.where(kk == r, best, w)
        biased = tl.where(hit, -float("inf"), biased)
    if GROUPED:
        if K > 1:
            w = tl.div_rn(w, tl.sum(w) + 1e-20)
        w = w * routed_scaling
    w = _round_weights(w, ROUND)
    tl.store(IDS + t * K + kk, ids, mask=kk < K)
    tl.store(W + t * K + kk, w, mask=kk < K)


def route_experts(
    logits: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    router: str,
    top_k: int,
    n_group: int = 1,
    topk_group: int = 1,
    routed_scaling: float = 1.0,
    round_to: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(topk_ids [T, k] int32, topk_weights [T, k] fp32) of fp32 logits [T, E] in one launch;
    no host sync, so it can be captured in a CUDA graph. See ``reference.route_experts``."""
    check_route_args(logits, bias, router, top_k, n_group, topk_group, round_to)
    t, e = logits.shape
    ids = torch.empty((t, top_k), dtype=torch.int32, device=logits.device)
    weights = torch.empty((t, top_k), dtype=torch.float32, device=logits.device)
    if t == 0:
        return ids, weights
    grouped = router == "sigmoid_group"
    groups = n_group if grouped else 1
    logits = logits if logits.stride(1) == 1 else logits.contiguous()
    bias = None if bias is None else bias.contiguous()
    _route_kernel[(t,)](
        logits, logits if bias is None else bias, ids, weights, logits.stride(0),
        float(routed_scaling), grouped, bias is not None, top_k, triton.next_power_of_2(top_k),
        groups, topk_group, e // groups,
        triton.next_power_of_2(groups), triton.next_power_of_2(e // groups), _ROUND[round_to],
        logits.is_cuda, num_warps=1,
    )  # fmt: skip
    return ids, weights
