"""LLaDA-MoE's checkpoint layout: the official parameter names and shapes, and the engine's
weights built from them (each layer's experts stacked as `kernels.fused_moe` takes them)."""

from __future__ import annotations

import torch

from dllmserve.models.config import ModelConfig
from dllmserve.models.moe_layout import gate_up, mlp_names, moe_names, stacked_moe
from dllmserve.models.transformer import LayerWeights, ModelWeights

# the shared expert is a module of the decoder layer, not of its mlp
SHARED = "shared_expert."


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
        if moe.moe_layers[i]:
            names.update(moe_names(p, d, moe, bias=_bias(cfg), shared=SHARED))
        else:
            names.update(mlp_names(p + "mlp.", d, cfg.mlp_hidden))
    names["model.norm.weight"] = (d,)
    if not cfg.tied_head:
        names["lm_head.weight"] = (v, d)
    return names


def _bias(cfg: ModelConfig) -> str | None:
    """The router's expert bias, where the config enables one."""
    return "mlp.expert_bias" if cfg.moe.expert_bias else None


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
                gate_up=None if is_moe else gate_up(t, p + "mlp."),
                down=None if is_moe else t.pop(p + "mlp.down_proj.weight"),
                moe=stacked_moe(t, p, cfg.moe, bias=_bias(cfg), shared=SHARED) if is_moe else None,
                q_norm=t.pop(a + "q_norm.weight") if cfg.qk_norm else None,
                k_norm=t.pop(a + "k_norm.weight") if cfg.qk_norm else None,
            )
        )
    embed = t.pop("model.embed_tokens.weight")
    final = t.pop("model.norm.weight")
    head = embed if cfg.tied_head else t.pop("lm_head.weight")
    return ModelWeights(embed=embed, layers=layers, final_norm=final, lm_head=head)
