"""The official LLaDA-MoE expert loop, as the baseline's MoE layers run it.

The official model (`LLaDAMoESparseMoeBlock`) visits every expert in turn, gathers the tokens
routed to it (`torch.where`, a host sync), runs its gate, up and down projections and adds the
weighted result into the output in the model dtype. The offline benchmark's "official" mode runs
the engine's dense path (a full forward every step, as the official `generate` does) with this
loop in place of the fused kernel, so the engine is compared with the official algorithm at the
official layer's cost on the same random weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

import dllmserve.models.moe as moe


def expert_loop(
    x: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    ids: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """sum_j weights[t, j] * expert_j(x_t), one expert at a time over all of them."""
    out = torch.zeros_like(x)
    inter = down.shape[2]
    w = weights.to(x.dtype)
    for e in range(gate_up.shape[0]):
        tok, slot = torch.where(ids == e)
        xe = x[tok]
        gate = F.linear(xe, gate_up[e, :inter])
        up = F.linear(xe, gate_up[e, inter:])
        y = F.linear(F.silu(gate) * up, down[e]) * w[tok, slot, None]
        out.index_add_(0, tok, y)
    return out


@contextmanager
def official_experts() -> Iterator[None]:
    """Within the block, every MoE layer runs `expert_loop` (bf16 weights only)."""
    fused = moe.experts
    moe.experts = expert_loop
    try:
        yield
    finally:
        moe.experts = fused
