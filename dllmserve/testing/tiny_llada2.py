"""Write tiny LLaDA2 (`LLaDA2MoeModelLM`) checkpoints in the official Hugging Face layout.

config.json has the official keys (and no mask_token_id, as the published ones: the mask id
comes from the tokenizer's `<|mask|>`), the tensors the official names (`query_key_value`,
`query_layernorm`, `dense`, `mlp.gate.expert_bias`, `mlp.shared_experts`), sharded safetensors
with their index and `{"format": "pt"}` metadata, and a byte tokenizer with the specials.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from dllmserve.models.byte_tokenizer import (
    LLADA2_CHAT_TEMPLATE,
    LLADA2_SPECIALS,
    build_byte_tokenizer,
)

LLADA2_AUTO_MAP = {
    "AutoConfig": "configuration_llada2_moe.LLaDA2MoeConfig",
    "AutoModelForCausalLM": "modeling_llada2_moe.LLaDA2MoeModelLM",
}


def llada2_config(
    *,
    d_model: int,
    n_layers: int,
    n_heads: int,
    n_kv_heads: int,
    head_dim: int,
    dense_hidden: int,
    expert_hidden: int,
    num_experts: int,
    top_k: int,
    n_group: int,
    topk_group: int,
    shared_experts: int,
    first_dense: int,
    routed_scaling: float,
    partial_rotary_factor: float,
    vocab: int,
    eos_id: int,
    max_len: int,
    dtype: torch.dtype = torch.float32,
) -> dict:
    """config.json of a LLaDA2 checkpoint with the official keys."""
    return {
        "architectures": ["LLaDA2MoeModelLM"],
        "auto_map": LLADA2_AUTO_MAP,
        "model_type": "llada2_moe",
        "hidden_size": d_model,
        "intermediate_size": dense_hidden,
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "use_qkv_bias": False,
        "use_qk_norm": True,
        "use_bias": False,
        "norm_head": False,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "max_position_embeddings": max_len,
        "rope_theta": 600000.0,
        "rope_scaling": None,
        "num_experts": num_experts,
        "num_shared_experts": shared_experts,
        "num_experts_per_tok": top_k,
        "n_group": n_group,
        "topk_group": topk_group,
        "routed_scaling_factor": routed_scaling,
        "moe_intermediate_size": expert_hidden,
        "first_k_dense_replace": first_dense,
        "partial_rotary_factor": partial_rotary_factor,
        "score_function": "sigmoid",
        "vocab_size": vocab,
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,
        "use_cache": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def _tensors(cfg: dict, model_dir: Path, gen: torch.Generator, logit_scale: float) -> dict:
    from dllmserve.models.llada2_config import read_llada2
    from dllmserve.models.llada2_layout import llada2_tensors

    out: dict[str, torch.Tensor] = {}
    for name, shape in llada2_tensors(read_llada2(cfg, model_dir)).items():
        if name.endswith("norm.weight"):
            out[name] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif name.endswith("expert_bias"):
            out[name] = 0.05 * torch.randn(shape, generator=gen)
        elif name == "model.word_embeddings.weight":
            out[name] = torch.randn(shape, generator=gen)
        else:
            scale = logit_scale if name == "lm_head.weight" else 4.0 if "gate.w" in name else 1.0
            out[name] = torch.randn(shape, generator=gen) * (scale / math.sqrt(shape[-1]))
    return out


def _save(tensors: dict[str, torch.Tensor], out: Path, num_shards: int) -> None:
    names = list(tensors)
    per = math.ceil(len(names) / num_shards)
    weight_map = {}
    for s in range(num_shards):
        part = names[s * per : (s + 1) * per]
        fname = f"model-{s + 1:05d}-of-{num_shards:05d}.safetensors"
        save_file({n: tensors[n].contiguous() for n in part}, str(out / fname), {"format": "pt"})
        weight_map.update({n: fname for n in part})
    index = {"metadata": {}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def write_tiny_llada2(
    path: str | Path,
    *,
    seed: int = 0,
    d_model: int = 64,
    n_layers: int = 3,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    head_dim: int = 16,
    dense_hidden: int = 96,
    expert_hidden: int = 32,
    num_experts: int = 8,
    top_k: int = 2,
    n_group: int = 2,
    topk_group: int = 1,
    shared_experts: int = 1,
    first_dense: int = 1,
    routed_scaling: float = 2.5,
    partial_rotary_factor: float = 0.5,
    max_len: int = 512,
    num_shards: int = 2,
    logit_scale: float = 6.0,
    eos_scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """A random tiny LLaDA2 checkpoint (GQA, partial RoPE, QK norm, `first_dense` dense layers
    then MoE with group-limited routing and shared experts). `eos_scale` scales EOS's LM-head
    row (above 1: answers end sooner)."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tok, ids = build_byte_tokenizer(LLADA2_SPECIALS)
    tok.save(str(out / "tokenizer.json"))
    vocab = ((tok.get_vocab_size() + 63) // 64) * 64
    cfg = llada2_config(
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=head_dim,
        dense_hidden=dense_hidden,
        expert_hidden=expert_hidden,
        num_experts=num_experts,
        top_k=top_k,
        n_group=n_group,
        topk_group=topk_group,
        shared_experts=shared_experts,
        first_dense=first_dense,
        routed_scaling=routed_scaling,
        partial_rotary_factor=partial_rotary_factor,
        vocab=vocab,
        eos_id=ids["<|endoftext|>"],
        max_len=max_len,
        dtype=dtype,
    )
    tensors = _tensors(cfg, out, torch.Generator().manual_seed(seed), logit_scale)
    tensors["lm_head.weight"][ids["<|endoftext|>"]] *= eos_scale
    _save({k: v.to(dtype) for k, v in tensors.items()}, out, num_shards)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "mask_token": "<|mask|>",
        "chat_template": LLADA2_CHAT_TEMPLATE,
        "model_max_length": max_len,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    return out
