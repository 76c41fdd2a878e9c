"""Read a checkpoint's config.json into one architecture-neutral `ModelConfig`.

Each supported architecture names its fields differently; everything past this module sees only
`ModelConfig`. Options the engine does not implement are refused here, by name.
"""

from __future__ import annotations

import json
from pathlib import Path

from dllmserve.errors import CheckpointError, UnsupportedModelError
from dllmserve.models.llada2_config import LLADA2_ARCHS, read_llada2
from dllmserve.models.model_config import ModelConfig, MoeConfig

# How the linear layers' weights may be stored besides the model dtype (dllmserve.models.fp8)
QUANTIZATIONS = ("fp8", "fp8-experts")
QUANTIZATION_HELP = (
    "fp8: every linear layer's weights in float8 e4m3 (per-channel scales, FP8 tensor cores); "
    "fp8-experts: only a mixture-of-experts model's routed experts"
)

DREAM_CONTEXT_LIMIT = 2048  # the Dream README's supported context

LLADA_MOE_ARCHS = ("LLaDAMoEModelLM", "LLaDAMoEModel")
LLADA_MOE_MASK_ID = 156895  # the model card's generate(mask_id=...): published configs omit it
LLADA_MOE_EOS_ID = 156892


def load_config(model_dir: str | Path) -> ModelConfig:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path} not found: `model` must be a Hugging Face checkpoint folder")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e
    model_type = str(raw.get("model_type", "")).lower()
    archs = raw.get("architectures") or []
    if any(a in LLADA2_ARCHS for a in archs) or model_type == "llada2_moe":
        return read_llada2(raw, Path(model_dir))
    if any(a in LLADA_MOE_ARCHS for a in archs) or model_type == "lladamoe":
        return read_llada_moe(raw)
    if model_type == "llada" or "LLaDAModelLM" in archs:
        return _llada(raw)
    if model_type == "dream" or "DreamModel" in archs:
        return _dream(raw)
    raise UnsupportedModelError(
        f"unsupported architecture: model_type={raw.get('model_type')!r}, "
        f"architectures={archs}; supported: LLaDA (model_type 'llada'), LLaDA-MoE "
        "(architectures ['LLaDAMoEModelLM']), LLaDA2 (['LLaDA2MoeModelLM']) and Dream ('Dream')"
    )


def require(raw: dict, key: str) -> object:
    if raw.get(key) is None:
        raise CheckpointError(f"config.json lacks the required key {key!r}")
    return raw[key]


def _llada(raw: dict) -> ModelConfig:
    norm = raw.get("layer_norm_type")
    if norm != "rms":
        has = "lacks layer_norm_type" if norm is None else f"has layer_norm_type={norm!r}"
        raise UnsupportedModelError(
            f"LLaDA config {has}: only 'rms' (RMSNorm, as LLaDA-8B's config.json sets it) is "
            "implemented; the official code reads a config without the key as LayerNorm"
        )
    refused = {
        "alibi": bool(raw.get("alibi", False)),
        "rope=false": not raw.get("rope", True),
        "block_type!='llama'": raw.get("block_type", "llama") != "llama",
        "block_group_size>1": int(raw.get("block_group_size", 1) or 1) > 1,
        "include_bias": bool(raw.get("include_bias", False)),
        "attention_layer_norm": bool(raw.get("attention_layer_norm", False)),
        "input_emb_norm": bool(raw.get("input_emb_norm", False)),
        "scale_logits": bool(raw.get("scale_logits", False)),
        "clip_qkv": raw.get("clip_qkv") is not None,
        "layer_norm_with_affine=false": not raw.get("layer_norm_with_affine", True),
        "bias_for_layer_norm": bool(raw.get("bias_for_layer_norm", False)),
        "activation_type not silu/swiglu": raw.get("activation_type", "silu")
        not in ("silu", "swiglu"),
    }
    bad = [name for name, on in refused.items() if on]
    if bad:
        raise UnsupportedModelError(f"LLaDA config needs unimplemented options: {', '.join(bad)}")
    d = int(require(raw, "d_model"))
    n_heads = int(require(raw, "n_heads"))
    if raw.get("multi_query_attention"):
        n_kv = 1
    else:
        n_kv = int(raw.get("n_kv_heads") or n_heads)
    vocab = int(raw.get("embedding_size") or require(raw, "vocab_size"))
    return ModelConfig(
        arch="llada",
        d_model=d,
        n_layers=int(require(raw, "n_layers")),
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=d // n_heads,
        mlp_hidden=int(require(raw, "mlp_hidden_size")),
        vocab_size=vocab,
        rope_theta=float(raw.get("rope_theta", 10000.0)),
        rms_eps=float(raw.get("rms_norm_eps", 1e-5)),
        max_len=int(raw.get("max_sequence_length", 4096)),
        mask_token_id=int(raw.get("mask_token_id", 126336)),
        eos_token_id=int(raw.get("eos_token_id", 126081)),
        qkv_bias=bool(raw.get("include_qkv_bias", False)),
        tied_head=bool(raw.get("weight_tying", False)),
        shifted_logits=False,
        rope_in_fp32=True,
    )


def _dream(raw: dict) -> ModelConfig:
    act = raw.get("hidden_act", "silu")
    if act != "silu":
        raise UnsupportedModelError(f"Dream config needs hidden_act={act!r}; only 'silu' is done")
    if raw.get("rope_scaling"):
        raise UnsupportedModelError("Dream config needs rope_scaling, which is not implemented")
    d = int(require(raw, "hidden_size"))
    n_heads = int(require(raw, "num_attention_heads"))
    eos = raw.get("eos_token_id", 151643)
    if isinstance(eos, list):
        eos = eos[0]
    return ModelConfig(
        arch="dream",
        d_model=d,
        n_layers=int(require(raw, "num_hidden_layers")),
        n_heads=n_heads,
        n_kv_heads=int(raw.get("num_key_value_heads") or n_heads),
        head_dim=d // n_heads,
        mlp_hidden=int(require(raw, "intermediate_size")),
        vocab_size=int(require(raw, "vocab_size")),
        rope_theta=float(raw.get("rope_theta", 1000000.0)),
        rms_eps=float(raw.get("rms_norm_eps", 1e-6)),
        max_len=min(
            int(raw.get("max_position_embeddings", DREAM_CONTEXT_LIMIT)), DREAM_CONTEXT_LIMIT
        ),
        mask_token_id=int(raw.get("mask_token_id", 151666)),
        eos_token_id=int(eos),
        qkv_bias=True,
        tied_head=bool(raw.get("tie_word_embeddings", False)),
        shifted_logits=True,
        rope_in_fp32=False,
    )


def _positive(raw: dict, key: str) -> int:
    value = raw.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise CheckpointError(f"config.json key {key!r} must be a positive integer, got {value!r}")
    return value


def _llada_moe_refusals(raw: dict) -> None:
    """LLaDA-MoE options the official layer has but this engine does not implement, by key."""
    score = raw.get("moe_router_score_function")
    refused = {
        "hidden_act": raw.get("hidden_act", "silu") != "silu",
        "rope_scaling": bool(raw.get("rope_scaling")),
        "attention_bias": bool(raw.get("attention_bias", False)),
        # the official layer always routes by softmax, whatever this key says
        "moe_router_score_function": score not in (None, "softmax"),
    }
    bad = [key for key, on in refused.items() if on]
    if bad:
        shown = ", ".join(f"{k}={raw.get(k)!r}" for k in bad)
        raise UnsupportedModelError(f"LLaDA-MoE config needs unimplemented options: {shown}")


def _moe_layer_pattern(raw: dict, n_layers: int) -> tuple[bool, ...]:
    freq = raw.get("moe_layer_freq")
    if not isinstance(freq, list) or len(freq) != n_layers:
        raise CheckpointError(
            f"config.json key 'moe_layer_freq' must list 0 (dense) or 1 (MoE) for each of the "
            f"{n_layers} layers, got {freq!r}"
        )
    return tuple(bool(f) for f in freq)


def read_llada_moe(raw: dict) -> ModelConfig:
    """LLaDA-MoE-7B-A1B (an OLMoE-like decoder under LLaDA's sampler): docs/models.md."""
    _llada_moe_refusals(raw)
    d, n_layers = _positive(raw, "hidden_size"), _positive(raw, "num_hidden_layers")
    n_heads = _positive(raw, "num_attention_heads")
    if d % n_heads:
        raise CheckpointError(f"hidden_size {d} is not a multiple of num_attention_heads {n_heads}")
    hd = d // n_heads
    factor = float(raw.get("partial_rotary_factor") or 1.0)  # absent: the whole head
    rot = int(hd * factor)
    if not 0 < factor <= 1 or rot % 2:
        raise UnsupportedModelError(
            f"partial_rotary_factor={factor} must be in (0, 1] and give an even number of rotary "
            f"dims of head_dim {hd} (got {rot})"
        )
    layers = _moe_layer_pattern(raw, n_layers)
    n_moe = sum(layers)
    experts = _positive(raw, "num_experts") if n_moe else int(raw.get("num_experts") or 0)
    top_k = _positive(raw, "num_experts_per_tok") if n_moe else 0
    if top_k > experts:
        raise CheckpointError(f"num_experts_per_tok {top_k} exceeds num_experts {experts}")
    shared = raw.get("shared_expert_intermediate_size")  # absent or null: no shared expert
    shared = 0 if shared is None else _positive(raw, "shared_expert_intermediate_size")
    eos = raw.get("eos_token_id", LLADA_MOE_EOS_ID)
    clip = raw.get("clip_qkv")
    return ModelConfig(
        arch="llada",
        d_model=d,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=int(raw.get("num_key_value_heads") or n_heads),
        head_dim=hd,
        mlp_hidden=_positive(raw, "dense_intermediate_size") if n_moe < n_layers else 0,
        vocab_size=_positive(raw, "vocab_size"),
        rope_theta=float(require(raw, "rope_theta")),
        rms_eps=float(raw.get("rms_norm_eps", 1e-5)),
        max_len=int(raw.get("max_position_embeddings", 4096)),
        mask_token_id=int(raw.get("mask_token_id", LLADA_MOE_MASK_ID)),
        eos_token_id=int(eos[0] if isinstance(eos, list) else eos),
        qkv_bias=False,
        tied_head=bool(raw.get("tie_word_embeddings", False)),
        shifted_logits=False,
        rope_in_fp32=False,  # fp32 cos/sin cast to the model dtype, applied there (as Dream)
        qk_norm=bool(raw.get("qk_layernorm", False)),
        rotary_dim=rot,
        clip_qkv=None if clip is None else float(clip),
        moe=MoeConfig(
            num_experts=experts,
            top_k=top_k,
            expert_hidden=_positive(raw, "expert_intermediate_size") if n_moe else 0,
            shared_hidden=shared,
            moe_layers=layers,
            router="softmax",
            expert_bias=bool(raw.get("moe_router_enable_expert_bias", False)),
        ),
    )
