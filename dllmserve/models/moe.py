"""The mixture-of-experts FFN: a router picks k experts a token, their SwiGLU outputs are summed
with the routing weights, and a shared expert (when there is one) is added.

Two routers, each following its official layer to the rounding step (docs/models.md):
- "softmax" (LLaDA-MoE): softmax in fp32 over the router logits, plus the expert bias when the
  checkpoint has one, top-k; the weights are those top-k values, NOT renormalised, rounded to
  the model dtype (the official layer ignores `norm_topk_prob` and `routed_scaling_factor`).
- "sigmoid_group" (LLaDA2, BailingMoeV2): sigmoid of fp32 logits; experts are chosen on
  score + bias, within the best `topk_group` of `n_group` groups (a group scores the sum of its
  two best biased scores); the weights are the unbiased scores of the chosen experts over their
  sum (+1e-20), times `routed_scaling_factor`.

The experts run as one fused kernel on CUDA (`kernels.fused_moe`); on the CPU as a loop over
experts whose GEMMs are row-chunked (`layers.linear`), so a token's result does not depend on
its batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dllmserve.models.config import MoeConfig
from dllmserve.models.fp8 import Fp8Experts, Fp8Rows, Fp8Weight
from dllmserve.models.layers import linear, silu_mul


@dataclass
class MoeWeights:
    router: torch.Tensor  # [E, d] model dtype (fp32 for sigmoid_group's gate), never quantized
    expert_bias: torch.Tensor | None  # [E], affects the choice (and, for softmax, the weight)
    gate_up: torch.Tensor | Fp8Experts  # [E, 2I, d]: each expert's gate rows, then its up rows
    down: torch.Tensor | Fp8Experts  # [E, d, I]
    shared_gate_up: torch.Tensor | Fp8Weight | None = None  # [2S, d]
    shared_down: torch.Tensor | Fp8Weight | None = None  # [d, S]


def route(h: torch.Tensor, w: MoeWeights, cfg: MoeConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """topk_ids [T, k] int32 and topk_weights [T, k] fp32 of the tokens h [T, d]. The router
    GEMM is a torch linear; the rest is `kernels.route_experts`: one launch on CUDA instead of
    about 13 (torch.topk's sorts among them), torch's routing with stable ties on the CPU."""
    from dllmserve import kernels

    if cfg.router == "softmax":
        logits = linear(h, w.router).float()  # in the model dtype, as the official nn.Linear gate
        round_to = h.dtype  # the official layer rounds the weights to the model dtype
    elif cfg.router == "sigmoid_group":
        logits = linear(h.float(), w.router.float())  # fp32, as the official gate
        round_to = None
    else:
        raise ValueError(f"unknown MoE router {cfg.router!r}")
    return kernels.route_experts(
        logits,
        w.expert_bias,
        router=cfg.router,
        top_k=cfg.top_k,
        n_group=cfg.n_group,
        topk_group=cfg.topk_group,
        routed_scaling=cfg.routed_scaling,
        round_to=round_to,
    )


def moe_parts(
    h: torch.Tensor | Fp8Rows, w: MoeWeights, cfg: MoeConfig
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The MoE FFN of the normed hidden states h [T, d]: the routed experts' output and the
    shared expert's (None without one), which the model sums in the residual add's launch.
    With FP8 experts h comes quantized once, with its `values` for the router, instead of
    once per reader."""
    values = h.values if isinstance(h, Fp8Rows) else h
    ids, weights = route(values, w, cfg)
    routed = experts(h, w.gate_up, w.down, ids, weights)
    if w.shared_gate_up is None:
        return routed, None
    fp8 = isinstance(w.shared_down, Fp8Weight)  # SiLU hands the FP8 GEMM its rows directly
    x = h if fp8 else values  # "fp8-experts": the shared expert stays in the model dtype
    return routed, linear(silu_mul(linear(x, w.shared_gate_up), fp8), w.shared_down)


def experts(
    x: torch.Tensor | Fp8Rows,
    gate_up: torch.Tensor | Fp8Experts,
    down: torch.Tensor | Fp8Experts,
    ids: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """out[t] = sum_j weights[t, j] * down_e(silu(gate_e x_t) * up_e x_t), e = ids[t, j],
    accumulated in fp32 and returned in x's dtype (x: rows, or FP8 rows with their values)."""
    rows = x if isinstance(x, Fp8Rows) else None
    x = x.values if rows is not None else x
    if x.is_cuda:
        from dllmserve import kernels

        if isinstance(gate_up, Fp8Experts):
            return kernels.fused_moe(
                x,
                gate_up.data,
                down.data,
                ids,
                weights,
                w_gate_up_scale=gate_up.scale,
                w_down_scale=down.scale,
                x_fp8=None if rows is None else (rows.data, rows.scale),
            )
        return kernels.fused_moe(x, gate_up, down, ids, weights)
    # per-row quantization: quantizing x[tok] is slicing the quantized rows
    return _experts_loop(x, gate_up, down, ids, weights)


def _expert(w: torch.Tensor | Fp8Experts, e: int) -> torch.Tensor | Fp8Weight:
    return w.expert(e) if isinstance(w, Fp8Experts) else w[e]


def _experts_loop(
    x: torch.Tensor,
    gate_up: torch.Tensor | Fp8Experts,
    down: torch.Tensor | Fp8Experts,
    ids: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """The CPU path: one expert at a time, in ascending expert order (the official loop's), so
    each token sums its experts in the same order whatever else is in the batch."""
    acc = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for e in torch.unique(ids).tolist():
        tok, slot = torch.where(ids == e)
        y = linear(silu_mul(linear(x[tok], _expert(gate_up, e))), _expert(down, e))
        acc.index_add_(0, tok, y.float() * weights[tok, slot, None])
    return acc.to(x.dtype)
