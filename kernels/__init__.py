"""Attention, selection and sampling kernels of dLLM-Serve, with a PyTorch fallback.

Layouts: tensors are packed ("varlen") along dim 0; index tensors are int32 on the tensors'
device; GQA query head h reads KV head h // (H // Hkv); outputs have q's dtype and are
accumulated in fp32. Each function runs its Triton kernel for CUDA tensors and the plain
PyTorch version of ``reference`` otherwise. Triton is imported lazily, so the package
imports on machines without it.
"""

from __future__ import annotations

import os

import torch

from . import reference

force_triton: bool = False
"""Tests set this to run the Triton kernels on CPU tensors under ``TRITON_INTERPRET=1``."""


def _use_triton(t: torch.Tensor) -> bool:
    return t.is_cuda or (force_triton and os.environ.get("TRITON_INTERPRET") == "1")


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    scale: float,
) -> torch.Tensor:
    """Bidirectional attention within each segment [cu[s], cu[s+1]): q [T,H,D], k/v [T,Hkv,D]."""
    if _use_triton(q):
        from .varlen_kernel import varlen_attention as impl
    else:
        impl = reference.varlen_attention
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
    if _use_triton(q):
        from .reuse_kernel import reuse_attention as impl
    else:
        impl = reference.reuse_attention
    return impl(q, k_new, v_new, cu_q, max_q, k_pool, v_pool, page_table, kept_len, scale)


def select_and_store(
    q_win: torch.Tensor,
    cu_win: torch.Tensor,
    k_seq: torch.Tensor,
    v_seq: torch.Tensor,
    cu_seq: torch.Tensor,
    win_start: torch.Tensor,
    win_len: torch.Tensor,
    n_keep: torch.Tensor,
    head_select: torch.Tensor,
    pool_kernel: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    page_table: torch.Tensor,
    scale: float,
    max_keep: int,
) -> torch.Tensor:
    """Keep the n_keep[r] best candidates (positions outside the window) per KV head, store
    their K/V at pool entries 0..n-1 of request r, return their positions [R, Hkv, max_keep]
    (ascending, int64, padded with -1). See ``reference.select_and_store`` for the scoring.
    """
    if _use_triton(k_seq):
        from .selection import select_and_store as impl
    else:
        impl = reference.select_and_store
    return impl(
        q_win,
        cu_win,
        k_seq,
        v_seq,
        cu_seq,
        win_start,
        win_len,
        n_keep,
        head_select,
        pool_kernel,
        k_pool,
        v_pool,
        page_table,
        scale,
        max_keep,
    )


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
    if _use_triton(logits):
        from .sampling import sample_tokens as impl
    else:
        impl = reference.sample_tokens
    return impl(
        logits,
        temperature,
        seed,
        step,
        positions,
        logits_eos_inf,
        conf_eos_eot_inf,
        mask_id,
        eos_id,
        eot_id,
    )


__all__ = [
    "force_triton",
    "reference",
    "reuse_attention",
    "sample_tokens",
    "select_and_store",
    "varlen_attention",
]
