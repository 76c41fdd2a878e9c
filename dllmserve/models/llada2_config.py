"""Read a LLaDA2.0 / LLaDA2.1 config.json (`LLaDA2MoeModelLM`, BailingMoeV2-style) into
`ModelConfig`.

A block-diffusion MoE decoder: fused q/k/v, per-head QK norm, partial RoPE, GQA, the first
`first_k_dense_replace` layers dense, the rest sigmoid group-limited MoE with shared experts.
The mask and EOS ids come from config.json, else from the tokenizer's special tokens; options
the engine does not implement are refused by key.
"""

from __future__ import annotations

import json
from pathlib import Path

from dllmserve.errors import CheckpointError, UnsupportedModelError
from dllmserve.models.model_config import ModelConfig, MoeConfig

LLADA2_ARCHS = ("LLaDA2MoeModelLM",)
LLADA2_MASK_TOKEN = "<|mask|>"  # where config.json has no mask_token_id: the tokenizer's
LLADA2_EOS_TOKEN = "<|endoftext|>"
LLADA2_BLOCK_LENGTH = 32  # the official generate's default block_length


def _positive(raw: dict, key: str, default: int | None = None) -> int:
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise CheckpointError(f"config.json key {key!r} must be a positive integer, got {value!r}")
    return value


def _required(raw: dict, key: str) -> object:
    if raw.get(key) is None:
        raise CheckpointError(f"config.json lacks the required key {key!r}")
    return raw[key]


def _refusals(raw: dict) -> None:
    """Options of the official model this engine does not implement, named by key."""
    refused = {
        "hidden_act": raw.get("hidden_act", "silu") != "silu",
        "rope_scaling": bool(raw.get("rope_scaling")),
        "use_qkv_bias": bool(raw.get("use_qkv_bias", False)),
        "use_bias": bool(raw.get("use_bias", False)),  # a bias on the attention output
        "norm_head": bool(raw.get("norm_head", False)),
        "use_sliding_window": bool(raw.get("use_sliding_window", False)),
        "score_function": raw.get("score_function", "sigmoid") != "sigmoid",
    }
    bad = [key for key, on in refused.items() if on]
    if bad:
        shown = ", ".join(f"{k}={raw.get(k)!r}" for k in bad)
        raise UnsupportedModelError(f"LLaDA2 config needs unimplemented options: {shown}")


def _special_id(raw: dict, key: str, token: str, model_dir: Path) -> int:
    """config.json's `key`, else the id of `token` among tokenizer.json's added tokens."""
    value = raw.get(key)
    if isinstance(value, list):
        value = value[0] if value else None
    if value is not None:
        return int(value)
    tok = model_dir / "tokenizer.json"
    if tok.is_file():
        for t in json.loads(tok.read_text()).get("added_tokens", []):
            if t.get("content") == token:
                return int(t["id"])
    raise CheckpointError(
        f"config.json has no {key!r} and tokenizer.json has no {token!r} token to take it from"
    )


def _moe(raw: dict, n_layers: int, dense_layers: int) -> MoeConfig:
    experts = _positive(raw, "num_experts")
    top_k = _positive(raw, "num_experts_per_tok")
    n_group = _positive(raw, "n_group", 1)
    topk_group = _positive(raw, "topk_group", 1)
    if top_k > experts:
        raise CheckpointError(f"num_experts_per_tok {top_k} exceeds num_experts {experts}")
    if experts % n_group or topk_group > n_group:
        raise CheckpointError(
            f"n_group {n_group} must divide num_experts {experts} and be >= topk_group {topk_group}"
        )
    if top_k > topk_group * (experts // n_group) or experts // n_group < 2:
        raise CheckpointError(
            f"num_experts_per_tok {top_k} needs more experts than topk_group {topk_group} groups "
            f"of {experts // n_group} hold (a group scores its two best, so at least 2 each)"
        )
    expert_hidden = _positive(raw, "moe_intermediate_size")
    shared = raw.get("num_shared_experts") or 0  # None or 0: no shared expert
    if not isinstance(shared, int) or shared < 0:
        raise CheckpointError(f"config.json key 'num_shared_experts' must be >= 0, got {shared!r}")
    return MoeConfig(
        num_experts=experts,
        top_k=top_k,
        expert_hidden=expert_hidden,
        shared_hidden=expert_hidden * shared,
        moe_layers=tuple(i >= dense_layers for i in range(n_layers)),
        router="sigmoid_group",
        expert_bias=True,  # a buffer of every official gate (zeros when untrained)
        n_group=n_group,
        topk_group=topk_group,
        routed_scaling=float(raw.get("routed_scaling_factor", 1.0)),
    )


def read_llada2(raw: dict, model_dir: Path) -> ModelConfig:
    """LLaDA2.0 / 2.1 (mini, flash): docs/models.md, "LLaDA2"."""
    _refusals(raw)
    d, n_layers = _positive(raw, "hidden_size"), _positive(raw, "num_hidden_layers")
    n_heads = _positive(raw, "num_attention_heads")
    n_kv = raw.get("num_key_value_heads") or n_heads
    hd = raw.get("head_dim") or d // n_heads
    if n_heads % n_kv:
        raise CheckpointError(f"num_attention_heads {n_heads} is not a multiple of {n_kv} KV heads")
    factor = float(raw.get("partial_rotary_factor", 1.0))
    rot = int(hd * factor)
    if not 0 < factor <= 1 or rot % 2:
        raise UnsupportedModelError(
            f"partial_rotary_factor={factor} must be in (0, 1] and give an even number of rotary "
            f"dims of head_dim {hd} (got {rot})"
        )
    dense_layers = int(raw.get("first_k_dense_replace") or 0)
    if not 0 <= dense_layers <= n_layers:
        raise CheckpointError(f"first_k_dense_replace {dense_layers} is outside [0, {n_layers}]")
    moe = _moe(raw, n_layers, dense_layers) if dense_layers < n_layers else None
    return ModelConfig(
        arch="llada2",
        d_model=d,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=int(n_kv),
        head_dim=int(hd),
        mlp_hidden=_positive(raw, "intermediate_size") if dense_layers else 0,
        vocab_size=_positive(raw, "vocab_size"),
        rope_theta=float(_required(raw, "rope_theta")),
        rms_eps=float(raw.get("rms_norm_eps", 1e-5)),
        max_len=int(raw.get("max_position_embeddings", 16384)),
        mask_token_id=_special_id(raw, "mask_token_id", LLADA2_MASK_TOKEN, model_dir),
        eos_token_id=_special_id(raw, "eos_token_id", LLADA2_EOS_TOKEN, model_dir),
        qkv_bias=False,
        tied_head=bool(raw.get("tie_word_embeddings", False)),
        shifted_logits=False,
        rope_in_fp32=False,  # fp32 cos/sin cast to the model dtype and applied there
        qk_norm=bool(raw.get("use_qk_norm", True)),
        rotary_dim=rot,
        moe=moe,
        block_diffusion=True,
        default_block_length=LLADA2_BLOCK_LENGTH,
    )
