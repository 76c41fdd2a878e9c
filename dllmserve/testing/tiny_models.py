"""Write tiny LLaDA / LLaDA-MoE / Dream checkpoints in the real Hugging Face layouts.

The files are what a user's checkpoint holds (config.json with its `auto_map`, sharded
safetensors with model.safetensors.index.json and the `{"format": "pt"}` metadata Hugging Face
writes, tokenizer.json and tokenizer_config.json with the chat template), with the real
parameter names, so they go through the same loader as LLaDA-8B. The tokenizer is byte-level
(any text encodes) plus the model's special tokens.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from dllmserve.models.byte_tokenizer import (
    DREAM_CHAT_TEMPLATE,
    DREAM_SPECIALS,
    LLADA_CHAT_TEMPLATE,
    LLADA_SPECIALS,
    build_byte_tokenizer,
)


def _save_sharded(tensors: dict[str, torch.Tensor], out: Path, num_shards: int) -> None:
    names = list(tensors)
    per = math.ceil(len(names) / num_shards)
    weight_map: dict[str, str] = {}
    total = 0
    for s in range(num_shards):
        chunk = names[s * per : (s + 1) * per]
        if not chunk:
            continue
        fname = f"model-{s + 1:05d}-of-{num_shards:05d}.safetensors"
        shard = {n: tensors[n].contiguous() for n in chunk}
        save_file(shard, str(out / fname), metadata={"format": "pt"})
        for n in chunk:
            weight_map[n] = fname
            total += tensors[n].numel() * tensors[n].element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _init(shape: tuple[int, ...], gen: torch.Generator, scale: float) -> torch.Tensor:
    fan_in = shape[-1]
    return torch.randn(shape, generator=gen) * (scale / math.sqrt(fan_in))


def llada_config(
    *, d_model: int, n_layers: int, n_heads: int, n_kv_heads: int, mlp_hidden: int,
    vocab: int, emb_rows: int, mask_id: int, eos_id: int, max_len: int,
    rope_theta: float = 500000.0, dtype: torch.dtype = torch.float32,
) -> dict:  # fmt: skip
    """config.json of a LLaDA checkpoint: LLaDA-8B's keys and options at the given sizes."""
    return {
        "architectures": ["LLaDAModelLM"],
        "auto_map": {
            "AutoConfig": "configuration_llada.LLaDAConfig",
            "AutoModel": "modeling_llada.LLaDAModelLM",
            "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
        },
        "model_type": "llada",
        "d_model": d_model,
        "n_layers": n_layers,
        "n_heads": n_heads,
        "n_kv_heads": n_kv_heads,
        "mlp_hidden_size": mlp_hidden,
        "vocab_size": vocab,
        "embedding_size": emb_rows,
        "mask_token_id": mask_id,
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,
        "rope_theta": rope_theta,
        "layer_norm_type": "rms",
        "rms_norm_eps": 1e-5,
        "max_sequence_length": max_len,
        "activation_type": "silu",
        "block_type": "llama",
        "include_bias": False,
        "include_qkv_bias": False,
        "weight_tying": False,
        "scale_logits": False,
        "input_emb_norm": False,
        "attention_layer_norm": False,
        "rope": True,
        "alibi": False,
        "multi_query_attention": None,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def llada_tokenizer_config(max_len: int) -> dict:
    """tokenizer_config.json of a LLaDA checkpoint: the fast tokenizer and the chat template."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "mask_token": "<|mdm_mask|>",
        "chat_template": LLADA_CHAT_TEMPLATE,
        "model_max_length": max_len,
    }


def dream_config(
    *, d_model: int, n_layers: int, n_heads: int, n_kv_heads: int, mlp_hidden: int,
    emb_rows: int, mask_id: int, eos_id: int, max_len: int, dtype: torch.dtype = torch.float32,
) -> dict:  # fmt: skip
    """config.json of a Dream checkpoint: Dream-v0's keys (and auto_map) at the given sizes."""
    return {
        "architectures": ["DreamModel"],
        "auto_map": {
            "AutoConfig": "configuration_dream.DreamConfig",
            "AutoModel": "modeling_dream.DreamModel",
        },
        "model_type": "Dream",
        "hidden_size": d_model,
        "intermediate_size": mlp_hidden,
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv_heads,
        "vocab_size": emb_rows,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": max_len,
        "mask_token_id": mask_id,
        "pad_token_id": eos_id,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "torch_dtype": "float32" if dtype == torch.float32 else "bfloat16",
    }


def dream_tokenizer_config(max_len: int) -> dict:
    """tokenizer_config.json of a Dream checkpoint: the fast tokenizer and ChatML."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "mask_token": "<|mask|>",
        "chat_template": DREAM_CHAT_TEMPLATE,
        "model_max_length": max_len,
    }


def write_tiny_checkpoint(
    path: str | Path,
    arch: str = "llada",
    *,
    seed: int = 0,
    d_model: int = 64,
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int | None = None,
    mlp_hidden: int = 128,
    max_len: int = 512,
    num_shards: int = 2,
    logit_scale: float = 6.0,
    stop_scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a random tiny checkpoint of ``arch`` ("llada" or "dream") into ``path``.

    Weights are scaled so that logits are peaked (``logit_scale``): a near-uniform random model
    would make confidences tie and hide sampling bugs behind rounding noise. ``stop_scale``
    scales the LM-head rows of EOS and the end-of-turn token, so that a model with it above 1
    really ends its answers (a random one almost never picks those two of ~260 tokens).
    """
    if arch not in ("llada", "dream"):
        raise ValueError(f"arch must be 'llada' or 'dream', got {arch!r}")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    n_kv = n_kv_heads or n_heads
    tok, ids = build_byte_tokenizer(LLADA_SPECIALS if arch == "llada" else DREAM_SPECIALS)
    vocab = tok.get_vocab_size()
    emb_rows = ((vocab + 63) // 64) * 64  # padded like the real checkpoints' embedding_size
    prefix, layer, top = _tiny_shapes(arch, d_model, n_heads, n_kv, mlp_hidden, emb_rows)
    gen = torch.Generator().manual_seed(seed)
    tensors = _tiny_top_weights(top, gen, logit_scale)
    head = "model.transformer.ff_out.weight" if arch == "llada" else "lm_head.weight"
    eot = "<|eot_id|>" if arch == "llada" else "<|im_end|>"
    for stop in (ids["<|endoftext|>"], ids[eot]):
        tensors[head][stop] *= stop_scale
    for i in range(n_layers):
        for name, shape in layer.items():
            tensors[prefix.format(i=i) + name] = _tiny_layer_weight(name, shape, gen)
    _save_sharded({k: v.to(dtype) for k, v in tensors.items()}, out, num_shards)
    sizes = dict(d_model=d_model, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv,
                 mlp_hidden=mlp_hidden, emb_rows=emb_rows, eos_id=ids["<|endoftext|>"],
                 max_len=max_len, dtype=dtype)  # fmt: skip
    if arch == "llada":
        config = llada_config(**sizes, vocab=vocab, mask_id=ids["<|mdm_mask|>"])
        tok_cfg = llada_tokenizer_config(max_len)
    else:
        config = dream_config(**sizes, mask_id=ids["<|mask|>"])
        tok_cfg = dream_tokenizer_config(max_len)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    return out


def _tiny_shapes(
    arch: str, d_model: int, n_heads: int, n_kv: int, mlp_hidden: int, emb_rows: int
) -> tuple[str, dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """The checkpoint's tensor names and shapes: (layer prefix, per-layer, top-level)."""
    hd = d_model // n_heads
    if arch == "llada":
        layer = {
            "attn_norm.weight": (d_model,),
            "q_proj.weight": (n_heads * hd, d_model),
            "k_proj.weight": (n_kv * hd, d_model),
            "v_proj.weight": (n_kv * hd, d_model),
            "attn_out.weight": (d_model, n_heads * hd),
            "ff_norm.weight": (d_model,),
            "ff_proj.weight": (mlp_hidden, d_model),
            "up_proj.weight": (mlp_hidden, d_model),
            "ff_out.weight": (d_model, mlp_hidden),
        }
        top = {
            "model.transformer.wte.weight": (emb_rows, d_model),
            "model.transformer.ln_f.weight": (d_model,),
            "model.transformer.ff_out.weight": (emb_rows, d_model),
        }
        return "model.transformer.blocks.{i}.", layer, top
    layer = {
        "input_layernorm.weight": (d_model,),
        "self_attn.q_proj.weight": (n_heads * hd, d_model),
        "self_attn.q_proj.bias": (n_heads * hd,),
        "self_attn.k_proj.weight": (n_kv * hd, d_model),
        "self_attn.k_proj.bias": (n_kv * hd,),
        "self_attn.v_proj.weight": (n_kv * hd, d_model),
        "self_attn.v_proj.bias": (n_kv * hd,),
        "self_attn.o_proj.weight": (d_model, n_heads * hd),
        "post_attention_layernorm.weight": (d_model,),
        "mlp.gate_proj.weight": (mlp_hidden, d_model),
        "mlp.up_proj.weight": (mlp_hidden, d_model),
        "mlp.down_proj.weight": (d_model, mlp_hidden),
    }
    top = {
        "model.embed_tokens.weight": (emb_rows, d_model),
        "model.norm.weight": (d_model,),
        "lm_head.weight": (emb_rows, d_model),
    }
    return "model.layers.{i}.", layer, top


def _tiny_top_weights(
    top: dict[str, tuple[int, ...]], gen: torch.Generator, logit_scale: float
) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for name, shape in top.items():
        if name.endswith("norm.weight") or name.endswith("ln_f.weight"):
            tensors[name] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif "wte" in name or "embed_tokens" in name:
            tensors[name] = torch.randn(shape, generator=gen)
        else:
            tensors[name] = _init(shape, gen, logit_scale)
    return tensors


def _tiny_layer_weight(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    if "norm" in name:
        return 1.0 + 0.1 * torch.randn(shape, generator=gen)
    if name.endswith("bias"):
        return 0.1 * torch.randn(shape, generator=gen)
    return _init(shape, gen, 1.0)


LLADA_MOE_AUTO_MAP = {
    "AutoConfig": "configuration_lladamoe.LLaDAMoEConfig",
    "AutoModel": "modeling_lladamoe.LLaDAMoEModelLM",
    "AutoModelForCausalLM": "modeling_lladamoe.LLaDAMoEModelLM",
}


def lladamoe_config(
    *, d_model: int, n_layers: int, n_heads: int, n_kv_heads: int, dense_hidden: int,
    expert_hidden: int, shared_hidden: int | None, num_experts: int, top_k: int,
    moe_layer_freq: list[int], qk_layernorm: bool, partial_rotary_factor: float,
    expert_bias: bool, vocab: int, mask_id: int, eos_id: int, max_len: int,
    model_type: str = "llada", dtype: torch.dtype = torch.float32,
) -> dict:  # fmt: skip
    """config.json of a LLaDA-MoE checkpoint with the official keys (the published one says
    model_type "llada" like LLaDA-8B, the dllm copy "lladamoe")."""
    return {
        "architectures": ["LLaDAMoEModelLM"],
        "auto_map": LLADA_MOE_AUTO_MAP,
        "model_type": model_type,
        "hidden_size": d_model,
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv_heads,
        "dense_intermediate_size": dense_hidden,
        "expert_intermediate_size": expert_hidden,
        "shared_expert_intermediate_size": shared_hidden,
        "num_experts": num_experts,
        "num_experts_per_tok": top_k,
        "moe_layer_freq": moe_layer_freq,
        "moe_router_enable_expert_bias": expert_bias,
        "moe_router_score_function": "softmax",
        "norm_topk_prob": False,
        "routed_scaling_factor": 1,
        "qk_layernorm": qk_layernorm,
        "partial_rotary_factor": partial_rotary_factor,
        "rope_theta": 50000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "clip_qkv": None,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": max_len,
        "vocab_size": vocab,
        "mask_token_id": mask_id,
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,
        "tie_word_embeddings": False,
        "use_cache": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def _lladamoe_tensors(
    cfg: dict, gen: torch.Generator, logit_scale: float
) -> dict[str, torch.Tensor]:
    """Random tensors of every official name and shape of `cfg` (loader.expected_tensors)."""
    from dllmserve.models.config import read_llada_moe
    from dllmserve.models.llada_moe_layout import llada_moe_tensors

    tensors: dict[str, torch.Tensor] = {}
    for name, shape in llada_moe_tensors(read_llada_moe(cfg)).items():
        if name.endswith("norm.weight"):
            tensors[name] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif name.endswith("expert_bias"):
            tensors[name] = 0.05 * torch.randn(shape, generator=gen)
        elif name == "model.embed_tokens.weight":
            tensors[name] = torch.randn(shape, generator=gen)
        elif name == "lm_head.weight":
            tensors[name] = _init(shape, gen, logit_scale)
        elif name.endswith("mlp.gate.weight"):  # peaked routing, so top-k is not a near-tie
            tensors[name] = _init(shape, gen, 4.0)
        else:
            tensors[name] = _init(shape, gen, 1.0)
    return tensors


def write_tiny_llada_moe(
    path: str | Path,
    *,
    seed: int = 0,
    d_model: int = 64,
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int | None = None,
    dense_hidden: int = 128,
    expert_hidden: int = 32,
    shared_hidden: int | None = 48,
    num_experts: int = 8,
    top_k: int = 2,
    moe_layer_freq: list[int] | None = None,
    qk_layernorm: bool = True,
    partial_rotary_factor: float = 1.0,
    expert_bias: bool = False,
    model_type: str = "llada",
    max_len: int = 512,
    num_shards: int = 2,
    logit_scale: float = 6.0,
    stop_scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """A random tiny LLaDA-MoE checkpoint in the official layout (every layer MoE unless
    `moe_layer_freq` says otherwise), with the LLaDA byte tokenizer; see write_tiny_checkpoint
    for `logit_scale` and `stop_scale`."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    tok, ids = build_byte_tokenizer(LLADA_SPECIALS)
    vocab = ((tok.get_vocab_size() + 63) // 64) * 64
    config = lladamoe_config(
        d_model=d_model, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads or n_heads,
        dense_hidden=dense_hidden, expert_hidden=expert_hidden, shared_hidden=shared_hidden,
        num_experts=num_experts, top_k=top_k, moe_layer_freq=moe_layer_freq or [1] * n_layers,
        qk_layernorm=qk_layernorm, partial_rotary_factor=partial_rotary_factor,
        expert_bias=expert_bias, vocab=vocab, mask_id=ids["<|mdm_mask|>"],
        eos_id=ids["<|endoftext|>"], max_len=max_len, model_type=model_type, dtype=dtype,
    )  # fmt: skip
    tensors = _lladamoe_tensors(config, gen, logit_scale)
    for stop in (ids["<|endoftext|>"], ids["<|eot_id|>"]):
        tensors["lm_head.weight"][stop] *= stop_scale
    _save_sharded({k: v.to(dtype) for k, v in tensors.items()}, out, num_shards)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(llada_tokenizer_config(max_len)))
    return out
