"""Read a checkpoint's config.json into one architecture-neutral `ModelConfig`.

Each supported architecture names its fields differently; everything past this module sees only
`ModelConfig`. Options the engine does not implement are refused here, by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dllmserve.errors import CheckpointError, UnsupportedModelError

# How the linear layers' weights may be stored besides the model dtype (dllmserve.models.fp8)
QUANTIZATIONS = ("fp8",)

DREAM_CONTEXT_LIMIT = 2048  # the Dream README's supported context


@dataclass(frozen=True)
class ModelConfig:
    arch: str  # "llada" or "dream"
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    mlp_hidden: int
    vocab_size: int  # rows of the embedding / LM head
    rope_theta: float
    rms_eps: float
    max_len: int
    mask_token_id: int
    eos_token_id: int
    qkv_bias: bool
    tied_head: bool
    shifted_logits: bool  # Dream: position i is predicted from hidden state i-1
    rope_in_fp32: bool  # LLaDA rotates q/k in fp32; Dream applies fp32 cos/sin in model dtype

    @property
    def group(self) -> int:
        return self.n_heads // self.n_kv_heads

    @property
    def default_schedule(self) -> str:
        """The commit schedule of the model's own sampler (`SamplingParams.schedule` unset)."""
        return "dream" if self.arch == "dream" else "blocks"


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
    if model_type == "llada" or "LLaDAModelLM" in archs:
        return _llada(raw)
    if model_type == "dream" or "DreamModel" in archs:
        return _dream(raw)
    raise UnsupportedModelError(
        f"unsupported architecture: model_type={raw.get('model_type')!r}, "
        f"architectures={archs}; supported: LLaDA (model_type 'llada') and Dream ('Dream')"
    )


def _require(raw: dict, key: str) -> object:
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
    d = int(_require(raw, "d_model"))
    n_heads = int(_require(raw, "n_heads"))
    if raw.get("multi_query_attention"):
        n_kv = 1
    else:
        n_kv = int(raw.get("n_kv_heads") or n_heads)
    vocab = int(raw.get("embedding_size") or _require(raw, "vocab_size"))
    return ModelConfig(
        arch="llada",
        d_model=d,
        n_layers=int(_require(raw, "n_layers")),
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=d // n_heads,
        mlp_hidden=int(_require(raw, "mlp_hidden_size")),
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
    d = int(_require(raw, "hidden_size"))
    n_heads = int(_require(raw, "num_attention_heads"))
    eos = raw.get("eos_token_id", 151643)
    if isinstance(eos, list):
        eos = eos[0]
    return ModelConfig(
        arch="dream",
        d_model=d,
        n_layers=int(_require(raw, "num_hidden_layers")),
        n_heads=n_heads,
        n_kv_heads=int(raw.get("num_key_value_heads") or n_heads),
        head_dim=d // n_heads,
        mlp_hidden=int(_require(raw, "intermediate_size")),
        vocab_size=int(_require(raw, "vocab_size")),
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
