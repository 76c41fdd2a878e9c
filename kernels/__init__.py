"""Attention, selection and sampling kernels of dLLM-Serve, with a PyTorch fallback.

Layouts: tensors are packed ("varlen") along dim 0; index tensors are int32 on the tensors'
device; GQA query head h reads KV head h // (H // Hkv); outputs have q's dtype and are
accumulated in fp32. Each function below runs the Triton launcher of its kernel module
(`varlen_kernel`, `reuse_kernel`, `selection`, `sampling`, `block_probs`, `fp8_quant`,
`moe_kernel`, ...: each holds its kernel, its launcher with the shape and stride checks, and
names its reference) for CUDA tensors, and the function of the same name in
`reference` otherwise. Triton is imported only on that path, so the package imports on
machines without it.
docs/design.md §11 has the algorithms.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable

import torch

from . import reference
from .selection_args import SelectionArgs

force_triton: bool = False
"""Tests set this to run the Triton kernels on CPU tensors under ``TRITON_INTERPRET=1``."""


def _impl(module: str, name: str, t: torch.Tensor) -> Callable:
    """The Triton launcher `module.name` for CUDA tensors (or forced), else `reference.name`."""
    if t.is_cuda or (force_triton and os.environ.get("TRITON_INTERPRET") == "1"):
        return getattr(importlib.import_module(f"{__name__}.{module}"), name)
    return getattr(reference, name)


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    scale: float,
) -> torch.Tensor:
    """Bidirectional attention within each segment [cu[s], cu[s+1]): q [T,H,D], k/v [T,Hkv,D]."""
    impl = _impl("varlen_kernel", "varlen_attention", q)
    return impl(q, k, v, cu_seqlens, max_seqlen, scale)


def reuse_attention(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    cu_q: torch.Tensor,
    max_q: int,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    page_table: torch.Tensor,
    kept_len: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Request r's queries q[cu_q[r]:cu_q[r+1]] attend to its kept_len[r] paged entries
    (entry j: pool[page_table[r, j // page_size], j % page_size]) then its own fresh rows.

    No host sync; shapes fixed per batch, so it can be captured in a CUDA graph.
    """
    impl = _impl("reuse_kernel", "reuse_attention", q)
    return impl(q, k_new, v_new, cu_q, max_q, k_pool, v_pool, page_table, kept_len, scale)


def select_and_store(args: SelectionArgs) -> torch.Tensor:
    """Keep the n_keep[r] best candidates (positions outside the window) per KV head, store
    their K/V at pool entries 0..n-1 of lane r, return their positions [R, Hkv, max_keep]
    (ascending, int64, padded with -1). See ``reference.select_and_store`` for the scoring.
    """
    return _impl("selection", "select_and_store", args.k_seq)(args)


def sample_tokens(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    seed: torch.Tensor,
    step: torch.Tensor,
    positions: torch.Tensor,
    logits_eos_inf: torch.Tensor,
    conf_eos_eot_inf: torch.Tensor,
    mask_id: int,
    eos_id: int,
    eot_id: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x0 [R,B] int64 and low-confidence score [R,B] float64 for logits [R,B,V]: the engine
    sampler's results without top-k/top-p filters (see ``reference.sample_tokens``)."""
    impl = _impl("sampling", "sample_tokens", logits)
    return impl(logits, temperature, seed, step, positions, logits_eos_inf, conf_eos_eot_inf,
                mask_id, eos_id, eot_id)  # fmt: skip


def block_probabilities(
    logits: torch.Tensor, temperature: torch.Tensor, drawn: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """x0 [R,B] int64 and its probability [R,B] float64 in softmax(logits / T) of logits
    [R,B,V]: the block-diffusion sampler's argmax, or `drawn` where T > 0 (``block_probs``;
    see ``reference.block_probabilities``)."""
    return _impl("block_probs", "block_probabilities", logits)(logits, temperature, drawn)


def token_probabilities(
    logits: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor, temperature: torch.Tensor
) -> torch.Tensor:
    """[k,B] float64: the probability of tokens[i, b] at logits[rows[i], b] in the softmax
    `block_probabilities` forms (its same bits for its own x0; ``block_probs``)."""
    impl = _impl("block_probs", "token_probabilities", logits)
    return impl(logits, rows, tokens, temperature)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token e4m3 quantization of x [M, K]: (q, scale [M, 1] fp32) with x ≈ q * scale."""
    return _impl("fp8_quant", "quantize_rows", x)(x)


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
    """Mixture-of-experts MLP of x [T, d]: out[t] = sum_j topk_weights[t, j] *
    down_e(silu(gate_e x_t) * up_e x_t), e = topk_ids[t, j] (int32 [T, k]); w_gate_up
    [E, 2I, d] (I gate rows, then I up rows), w_down [E, d, I]. FP8 when the per-row fp32
    scales ([E, 2I], [E, d]) of e4m3 weights are given; `x_fp8`: x's rows already quantized
    (`quantize_rows(x)`). Roundings: the ``moe_kernel`` module."""
    impl = _impl("moe_kernel", "fused_moe", x)
    return impl(x, w_gate_up, w_down, topk_ids, topk_weights, w_gate_up_scale=w_gate_up_scale,
                w_down_scale=w_down_scale, x_fp8=x_fp8)  # fmt: skip


def segment_argmax(
    scores: torch.Tensor,
    order: torch.Tensor,
    bounds: torch.Tensor,
    table: torch.Tensor,
    floor: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each (row, position, segment)'s best floored score over its ids and the lowest id
    reaching it (structured outputs' per-class scores; `segment_max`)."""
    impl = _impl("segment_max", "segment_argmax", scores)
    return impl(scores, order, bounds, table, floor)


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
    """topk_ids [T, k] int32 and topk_weights [T, k] fp32 of fp32 router logits [T, E]: the MoE
    routers ("softmax", "sigmoid_group") after the router GEMM in one launch (`routing`)."""
    impl = _impl("routing", "route_experts", logits)
    return impl(
        logits,
        bias,
        router=router,
        top_k=top_k,
        n_group=n_group,
        topk_group=topk_group,
        routed_scaling=routed_scaling,
        round_to=round_to,
    )


__all__ = [
    "SelectionArgs",
    "block_probabilities",
    "force_triton",
    "fused_moe",
    "quantize_rows",
    "reference",
    "reuse_attention",
    "route_experts",
    "sample_tokens",
    "segment_argmax",
    "select_and_store",
    "token_probabilities",
    "varlen_attention",
]
