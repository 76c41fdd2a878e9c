"""The bidirectional transformer that LLaDA, LLaDA-MoE and Dream share, over packed tokens.

All are Llama-style pre-norm stacks with SwiGLU MLPs; they differ only in parameter names
(handled by the loader), q/k/v biases, RoPE precision and width, a per-head q/k norm, logit
shifting and, per layer, a dense or mixture-of-experts FFN (`ModelConfig`).
Attention is delegated to a per-iteration callable so the dense, sparse and Triton paths
share this one forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from dllmserve.models import progress
from dllmserve.models.config import ModelConfig
from dllmserve.models.fp8 import Fp8Experts, Fp8Weight
from dllmserve.models.layers import (
    KVTarget,
    Rotary,
    add_rms_norm,
    linear,
    rms_norm,
    silu_mul,
    store_kv,
)
from dllmserve.models.moe import MoeWeights, moe_parts


class Attention(Protocol):
    """Attention of one iteration's packed tokens; q is [T, H, D], k/v [T, Hkv, D], post-RoPE."""

    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor: ...

    def select(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Keep what later steps need of this layer's K/V (sparse SELECT); may do nothing."""

    def kv_target(self, layer: int) -> KVTarget | None:
        """Where every packed row's fresh K/V of this layer goes before anyone attends (block
        diffusion: each row's cache entry), written by the RoPE launch; None: nowhere."""


@dataclass
class LayerWeights:
    attn_norm: torch.Tensor
    qkv: torch.Tensor | Fp8Weight  # [(H + 2 Hkv) * D, d]: q, k and v fused into one GEMM
    qkv_bias: torch.Tensor | None
    o: torch.Tensor | Fp8Weight
    mlp_norm: torch.Tensor
    gate_up: torch.Tensor | Fp8Weight | None  # [2 * mlp, d]: gate (silu side) then up
    down: torch.Tensor | Fp8Weight | None  # (both None in an MoE layer)
    moe: MoeWeights | None = None
    q_norm: torch.Tensor | None = None  # [D]: per-head RMSNorm of q and k before RoPE
    k_norm: torch.Tensor | None = None


@dataclass
class ModelWeights:
    embed: torch.Tensor
    layers: list[LayerWeights]
    final_norm: torch.Tensor
    lm_head: torch.Tensor


class DiffusionTransformer:
    def __init__(self, cfg: ModelConfig, weights: ModelWeights, device: torch.device) -> None:
        self.cfg = cfg
        self.w = weights
        if cfg.moe is not None and cfg.moe.router == "sigmoid_group":
            for lw in weights.layers:  # the gate's GEMM is fp32: one copy now, not a cast a call
                if lw.moe is not None:
                    lw.moe.router = lw.moe.router.float()
        self.device = device
        self.dtype = weights.embed.dtype
        self.rotary = Rotary(
            cfg.head_dim, cfg.rope_theta, cfg.max_len, device, cfg.rope_in_fp32, cfg.rope_dim
        )

    @torch.inference_mode()
    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, attention: Attention
    ) -> torch.Tensor:
        """Final-normed hidden states [T, d] of the packed tokens."""
        cfg = self.cfg
        hd, nh, nkv = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
        layers = self.w.layers
        # FP8 weights: the norms and SiLU that feed a GEMM hand it per-token FP8 rows directly
        fp8 = isinstance(layers[0].qkv, Fp8Weight)  # the attention's (all but "fp8-experts")
        x = self.w.embed[input_ids]
        h = rms_norm(x, layers[0].attn_norm, cfg.rms_eps, fp8)
        for i, lw in enumerate(layers):
            qkv = linear(h, lw.qkv, lw.qkv_bias)
            store = attention.kv_target(i)
            if cfg.clip_qkv is None:  # q/k norm, RoPE and the K/V write in one pass
                norms = None if lw.q_norm is None else (lw.q_norm, lw.k_norm, cfg.rms_eps)
                q, k = self.rotary.qk(qkv, nh, nkv, positions, norms, store)
                v = qkv[:, (nh + nkv) * hd :].reshape(-1, nkv, hd)
            else:
                q, k, v = self._clipped_qkv(qkv, lw, positions)
                if store is not None:
                    store_kv(k, v, store)
            attention.select(i, q, k, v)
            att = attention(i, q, k, v)
            o = linear(att.reshape(-1, nh * hd), lw.o)
            # an MoE layer's router reads the norm's output unquantized, its experts the FP8 rows
            x, h = add_rms_norm(
                x, o, lw.mlp_norm, cfg.rms_eps, _ffn_takes_fp8(lw), keep=lw.moe is not None
            )
            if lw.moe is None:
                mlp, shared = linear(silu_mul(linear(h, lw.gate_up), fp8), lw.down), None
            else:  # the routed and shared experts' outputs are summed by the residual add
                mlp, shared = moe_parts(h, lw.moe, cfg.moe)
            last = i + 1 == len(layers)  # the final norm feeds the LM head, which stays unquantized
            after = self.w.final_norm if last else layers[i + 1].attn_norm
            x, h = add_rms_norm(x, mlp, after, cfg.rms_eps, fp8 and not last, second=shared)
            progress.tick()  # the worker's watchdog: a slow forward still moves
        return h

    def _clipped_qkv(
        self, qkv: torch.Tensor, lw: LayerWeights, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The attention inputs of a checkpoint with `clip_qkv`: per-head RMSNorm of q and k
        (where it has one), then the clip of q, k and v, then RoPE (in the official order)."""
        cfg = self.cfg
        hd, nh, nkv = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
        q, k, v = qkv.split([nh * hd, nkv * hd, nkv * hd], dim=-1)
        if lw.q_norm is not None:
            q = rms_norm(q.reshape(-1, hd), lw.q_norm, cfg.rms_eps)
            k = rms_norm(k.reshape(-1, hd), lw.k_norm, cfg.rms_eps)
        if cfg.clip_qkv is not None:
            q, k, v = (t.clamp(-cfg.clip_qkv, cfg.clip_qkv) for t in (q, k, v))
        q, k = q.reshape(-1, nh, hd), k.reshape(-1, nkv, hd)
        return self.rotary(q, positions), self.rotary(k, positions), v.reshape(-1, nkv, hd)

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM head on the given rows only (the positions being decided)."""
        return linear(hidden, self.w.lm_head)


def _ffn_takes_fp8(lw: LayerWeights) -> bool:
    """Whether the layer's FFN multiplies on FP8 tensor cores: its dense gate/up, or its routed
    experts (FP8 under "fp8-experts" too, while the rest of the layer stays in the model dtype)."""
    if lw.moe is not None:
        return isinstance(lw.moe.gate_up, Fp8Experts)
    return isinstance(lw.gate_up, Fp8Weight)
