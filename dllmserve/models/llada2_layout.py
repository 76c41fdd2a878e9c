"""LLaDA2's checkpoint layout (`LLaDA2MoeModelLM`): the official parameter names and shapes, and
the engine's weights built from them (experts stacked as `kernels.fused_moe` takes them)."""

from __future__ import annotations

import torch

from dllmserve.models.config import ModelConfig
from dllmserve.models.moe_layout import gate_up, mlp_names, moe_names, stacked_moe
from dllmserve.models.transformer import LayerWeights, ModelWeights

# where LLaDA2 keeps its router's expert bias (always there) and its shared experts
BIAS, SHARED = "mlp.gate.expert_bias", "mlp.shared_experts."


def _is_moe(cfg: ModelConfig, layer: int) -> bool:
    return cfg.moe is not None and cfg.moe.moe_layers[layer]


def llada2_tensors(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of a LLaDA2 checkpoint, by its official name, with its shape."""
    d, hd, v, moe = cfg.d_model, cfg.head_dim, cfg.vocab_size, cfg.moe
    qkv = (cfg.n_heads + 2 * cfg.n_kv_heads) * hd
    names: dict[str, tuple[int, ...]] = {"model.word_embeddings.weight": (v, d)}
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        a = p + "attention."
        names.update(
            {
                p + "input_layernorm.weight": (d,),
                a + "query_key_value.weight": (qkv, d),
                a + "dense.weight": (d, cfg.n_heads * hd),
                p + "post_attention_layernorm.weight": (d,),
            }
        )
        if cfg.qk_norm:
            names[a + "query_layernorm.weight"] = (hd,)
            names[a + "key_layernorm.weight"] = (hd,)
        if _is_moe(cfg, i):
            names.update(moe_names(p, d, moe, bias=BIAS, shared=SHARED))
        else:
            names.update(mlp_names(p + "mlp.", d, cfg.mlp_hidden))
    names["model.norm.weight"] = (d,)
    if not cfg.tied_head:
        names["lm_head.weight"] = (v, d)
    return names


def assemble_llada2(cfg: ModelConfig, t: dict[str, torch.Tensor]) -> ModelWeights:
    """The engine's weights from the checked tensors `t` (consumed as they are used). The fused
    query_key_value is already laid out [H·hd | Hkv·hd | Hkv·hd], the engine's own order."""
    layers = []
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        a = p + "attention."
        moe = _is_moe(cfg, i)
        layers.append(
            LayerWeights(
                attn_norm=t.pop(p + "input_layernorm.weight"),
                qkv=t.pop(a + "query_key_value.weight"),
                qkv_bias=None,
                o=t.pop(a + "dense.weight"),
                mlp_norm=t.pop(p + "post_attention_layernorm.weight"),
                gate_up=None if moe else gate_up(t, p + "mlp."),
                down=None if moe else t.pop(p + "mlp.down_proj.weight"),
                moe=stacked_moe(t, p, cfg.moe, bias=BIAS, shared=SHARED) if moe else None,
                q_norm=t.pop(a + "query_layernorm.weight") if cfg.qk_norm else None,
                k_norm=t.pop(a + "key_layernorm.weight") if cfg.qk_norm else None,
            )
        )
    embed = t.pop("model.word_embeddings.weight")
    final = t.pop("model.norm.weight")
    head = embed if cfg.tied_head else t.pop("lm_head.weight")
    return ModelWeights(embed=embed, layers=layers, final_norm=final, lm_head=head)
