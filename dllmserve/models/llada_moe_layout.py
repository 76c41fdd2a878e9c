"""LLaDA-MoE's checkpoint layout: the official parameter names and shapes, and the engine's
weights built from them (each layer's experts stacked as `kernels.fused_moe` takes them)."""

from __future__ import annotations

import torch

from dllmserve.models.config import ModelConfig
from dllmserve.models.moe import MoeWeights
from dllmserve.models.transformer import LayerWeights, ModelWeights

_PROJ = ("gate_proj", "up_proj", "down_proj")


def _mlp_names(prefix: str, d: int, hidden: int) -> dict[str, tuple[int, ...]]:
    return {
        prefix + "gate_proj.weight": (hidden, d),
        prefix + "up_proj.weight": (hidden, d),
        prefix + "down_proj.weight": (d, hidden),
    }


def llada_moe_tensors(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of a LLaDA-MoE checkpoint, by its official name, with its shape."""
    d, hd, v, moe = cfg.d_model, cfg.head_dim, cfg.vocab_size, cfg.moe
    q, kv = cfg.n_heads * hd, cfg.n_kv_heads * hd
    names: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, d)}
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        names.update(
            {
                p + "input_layernorm.weight": (d,),
                p + "self_attn.q_proj.weight": (q, d),
                p + "self_attn.k_proj.weight": (kv, d),
                p + "self_attn.v_proj.weight": (kv, d),
                p + "self_attn.o_proj.weight": (d, q),
                p + "post_attention_layernorm.weight": (d,),
            }
        )
        if cfg.qk_norm:
            names[p + "self_attn.q_norm.weight"] = (hd,)
            names[p + "self_attn.k_norm.weight"] = (hd,)
        if not moe.moe_layers[i]:
            names.update(_mlp_names(p + "mlp.", d, cfg.mlp_hidden))
            continue
        names[p + "mlp.gate.weight"] = (moe.num_experts, d)
        if moe.expert_bias:
            names[p + "mlp.expert_bias"] = (moe.num_experts,)
        for e in range(moe.num_experts):
            names.update(_mlp_names(p + f"mlp.experts.{e}.", d, moe.expert_hidden))
        if moe.shared_hidden:  # a module of the decoder layer, not of its mlp
            names.update(_mlp_names(p + "shared_expert.", d, moe.shared_hidden))
    names["model.norm.weight"] = (d,)
    if not cfg.tied_head:
        names["lm_head.weight"] = (v, d)
    return names


def _gate_up(t: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    return torch.cat([t.pop(prefix + "gate_proj.weight"), t.pop(prefix + "up_proj.weight")])


def _moe(cfg: ModelConfig, t: dict[str, torch.Tensor], p: str) -> MoeWeights:
    moe = cfg.moe
    experts = [f"{p}mlp.experts.{e}." for e in range(moe.num_experts)]
    shared = p + "shared_expert."
    return MoeWeights(
        router=t.pop(p + "mlp.gate.weight"),
        expert_bias=t.pop(p + "mlp.expert_bias") if moe.expert_bias else None,
        gate_up=torch.stack([_gate_up(t, e) for e in experts]),
        down=torch.stack([t.pop(e + "down_proj.weight") for e in experts]),
        shared_gate_up=_gate_up(t, shared) if moe.shared_hidden else None,
        shared_down=t.pop(shared + "down_proj.weight") if moe.shared_hidden else None,
    )


def assemble_llada_moe(cfg: ModelConfig, t: dict[str, torch.Tensor]) -> ModelWeights:
    """The engine's weights from the checked tensors `t` (consumed as they are used)."""
    layers = []
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        is_moe = cfg.moe.moe_layers[i]
        layers.append(
            LayerWeights(
                attn_norm=t.pop(p + "input_layernorm.weight"),
                qkv=torch.cat([t.pop(a + f"{x}_proj.weight") for x in "qkv"]),
                qkv_bias=None,
                o=t.pop(a + "o_proj.weight"),
                mlp_norm=t.pop(p + "post_attention_layernorm.weight"),
                gate_up=None if is_moe else _gate_up(t, p + "mlp."),
                down=None if is_moe else t.pop(p + "mlp.down_proj.weight"),
                moe=_moe(cfg, t, p) if is_moe else None,
                q_norm=t.pop(a + "q_norm.weight") if cfg.qk_norm else None,
                k_norm=t.pop(a + "k_norm.weight") if cfg.qk_norm else None,
            )
        )
    embed = t.pop("model.embed_tokens.weight")
    final = t.pop("model.norm.weight")
    head = embed if cfg.tied_head else t.pop("lm_head.weight")
    return ModelWeights(embed=embed, layers=layers, final_norm=final, lm_head=head)
