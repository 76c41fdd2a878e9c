"""Load a Hugging Face checkpoint folder (config, sharded safetensors, tokenizer) into a model.

Every tensor is checked by its real name and shape before use, so a wrong or truncated
checkpoint fails at start with the tensor named, not mid-batch with a shape error.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open

from dllmserve.errors import CheckpointError, ValidationError
from dllmserve.models.config import QUANTIZATIONS, ModelConfig, load_config
from dllmserve.models.fp8 import check_fp8_support, quantize_experts, quantize_weight
from dllmserve.models.llada2_layout import assemble_llada2, llada2_tensors
from dllmserve.models.llada_moe_layout import assemble_llada_moe, llada_moe_tensors
from dllmserve.models.transformer import DiffusionTransformer, LayerWeights, ModelWeights

log = logging.getLogger(__name__)


def expected_tensors(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The checkpoint's parameter names and shapes for this architecture."""
    d, hd, mlp, v = cfg.d_model, cfg.head_dim, cfg.mlp_hidden, cfg.vocab_size
    q, kv = cfg.n_heads * hd, cfg.n_kv_heads * hd
    names: dict[str, tuple[int, ...]] = {}
    if cfg.layout == "llada-moe":
        return llada_moe_tensors(cfg)
    if cfg.layout == "llada2":
        return llada2_tensors(cfg)
    if cfg.arch == "llada":
        names["model.transformer.wte.weight"] = (v, d)
        for i in range(cfg.n_layers):
            p = f"model.transformer.blocks.{i}."
            names.update(
                {
                    p + "attn_norm.weight": (d,),
                    p + "q_proj.weight": (q, d),
                    p + "k_proj.weight": (kv, d),
                    p + "v_proj.weight": (kv, d),
                    p + "attn_out.weight": (d, q),
                    p + "ff_norm.weight": (d,),
                    p + "ff_proj.weight": (mlp, d),
                    p + "up_proj.weight": (mlp, d),
                    p + "ff_out.weight": (d, mlp),
                }
            )
            if cfg.qkv_bias:
                names.update({p + "q_proj.bias": (q,), p + "k_proj.bias": (kv,)})
                names[p + "v_proj.bias"] = (kv,)
        names["model.transformer.ln_f.weight"] = (d,)
        if not cfg.tied_head:
            names["model.transformer.ff_out.weight"] = (v, d)
    else:
        names["model.embed_tokens.weight"] = (v, d)
        for i in range(cfg.n_layers):
            p = f"model.layers.{i}."
            names.update(
                {
                    p + "input_layernorm.weight": (d,),
                    p + "self_attn.q_proj.weight": (q, d),
                    p + "self_attn.q_proj.bias": (q,),
                    p + "self_attn.k_proj.weight": (kv, d),
                    p + "self_attn.k_proj.bias": (kv,),
                    p + "self_attn.v_proj.weight": (kv, d),
                    p + "self_attn.v_proj.bias": (kv,),
                    p + "self_attn.o_proj.weight": (d, q),
                    p + "post_attention_layernorm.weight": (d,),
                    p + "mlp.gate_proj.weight": (mlp, d),
                    p + "mlp.up_proj.weight": (mlp, d),
                    p + "mlp.down_proj.weight": (d, mlp),
                }
            )
        names["model.norm.weight"] = (d,)
        if not cfg.tied_head:
            names["lm_head.weight"] = (v, d)
    return names


def _shard_map(model_dir: Path) -> dict[str, Path]:
    """Tensor name -> shard file, from the index or the single-file layout."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index} has no 'weight_map'")
        shards = {n: model_dir / f for n, f in weight_map.items()}
        for f in set(shards.values()):
            if not f.is_file():
                raise CheckpointError(f"shard {f.name} named in {index.name} is missing")
        return shards
    single = model_dir / "model.safetensors"
    if single.is_file():
        with safe_open(str(single), framework="pt") as fh:
            return {n: single for n in fh.keys()}
    raise CheckpointError(
        f"no weights in {model_dir}: expected model.safetensors.index.json or model.safetensors"
    )


def load_weights(
    model_dir: str | Path, cfg: ModelConfig, dtype: torch.dtype, device: torch.device
) -> ModelWeights:
    model_dir = Path(model_dir)
    shards = _shard_map(model_dir)
    expected = expected_tensors(cfg)
    missing = [n for n in expected if n not in shards]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"checkpoint lacks tensor {missing[0]}{more}")
    unused = sorted(set(shards) - set(expected))
    if unused:
        log.warning("ignoring %d tensors the model does not use, e.g. %s", len(unused), unused[0])

    by_file: dict[Path, list[str]] = {}
    for name in expected:
        by_file.setdefault(shards[name], []).append(name)
    t: dict[str, torch.Tensor] = {}
    for f, names in by_file.items():
        with safe_open(str(f), framework="pt") as fh:
            for name in names:
                shape = tuple(fh.get_slice(name).get_shape())
                if shape != expected[name]:
                    raise CheckpointError(
                        f"tensor {name} has shape {list(shape)}, expected {list(expected[name])}"
                    )
                t[name] = fh.get_tensor(name).to(device=device, dtype=dtype)
    if cfg.layout == "llada-moe":
        return assemble_llada_moe(cfg, t)
    if cfg.layout == "llada2":
        return assemble_llada2(cfg, t)
    return _assemble(cfg, t)


def _assemble(cfg: ModelConfig, t: dict[str, torch.Tensor]) -> ModelWeights:
    layers = []
    for i in range(cfg.n_layers):
        if cfg.arch == "llada":
            p = f"model.transformer.blocks.{i}."
            qn, kn, vn = p + "q_proj", p + "k_proj", p + "v_proj"
            norms = (p + "attn_norm.weight", p + "ff_norm.weight")
            o, gate, up, down = p + "attn_out", p + "ff_proj", p + "up_proj", p + "ff_out"
        else:
            p = f"model.layers.{i}."
            qn, kn, vn = (p + f"self_attn.{x}_proj" for x in "qkv")
            norms = (p + "input_layernorm.weight", p + "post_attention_layernorm.weight")
            o = p + "self_attn.o_proj"
            gate, up, down = (p + f"mlp.{x}_proj" for x in ("gate", "up", "down"))
        bias = None
        if cfg.qkv_bias:
            bias = torch.cat([t.pop(qn + ".bias"), t.pop(kn + ".bias"), t.pop(vn + ".bias")])
        layers.append(
            LayerWeights(
                attn_norm=t.pop(norms[0]),
                qkv=torch.cat(
                    [t.pop(qn + ".weight"), t.pop(kn + ".weight"), t.pop(vn + ".weight")]
                ),
                qkv_bias=bias,
                o=t.pop(o + ".weight"),
                mlp_norm=t.pop(norms[1]),
                gate_up=torch.cat([t.pop(gate + ".weight"), t.pop(up + ".weight")]),
                down=t.pop(down + ".weight"),
            )
        )
    if cfg.arch == "llada":
        embed = t.pop("model.transformer.wte.weight")
        final = t.pop("model.transformer.ln_f.weight")
        head = embed if cfg.tied_head else t.pop("model.transformer.ff_out.weight")
    else:
        embed = t.pop("model.embed_tokens.weight")
        final = t.pop("model.norm.weight")
        head = embed if cfg.tied_head else t.pop("lm_head.weight")
    return ModelWeights(embed=embed, layers=layers, final_norm=final, lm_head=head)


def check_quantization(cfg: ModelConfig, quantization: str | None, device: torch.device) -> None:
    """Refuse, before any weight is read, a quantization this model or device cannot take."""
    if quantization is None:
        return
    if quantization not in QUANTIZATIONS:
        raise ValidationError(
            "quantization", f"must be one of {list(QUANTIZATIONS)} or None, got {quantization!r}"
        )
    if quantization == "fp8-experts" and cfg.moe is None:
        raise ValidationError(
            "quantization", "'fp8-experts' needs a mixture-of-experts model; this one has none"
        )
    check_fp8_support(device, quantization)


def quantize_linear_layers(weights: ModelWeights, quantization: str | None) -> ModelWeights:
    """Store linear weights in `quantization` (None: as loaded; checked by `check_quantization`),
    one layer at a time so the bf16 and FP8 copies of the whole model never coexist: "fp8"
    every layer's (q/k/v, o, gate/up, down, every expert's, the shared expert's), "fp8-experts"
    the routed experts' only (the bulk of an MoE model's bytes; its few-row dense GEMMs stay on
    bf16 tensor cores)."""
    if quantization is None:
        return weights
    experts_only = quantization == "fp8-experts"
    for lw in weights.layers:
        m = lw.moe  # the router stays unquantized: it decides, it is not a GEMM of note
        if m is not None:
            m.gate_up, m.down = quantize_experts(m.gate_up), quantize_experts(m.down)
        if experts_only:
            continue
        lw.qkv, lw.o = quantize_weight(lw.qkv), quantize_weight(lw.o)
        if m is None:
            lw.gate_up, lw.down = quantize_weight(lw.gate_up), quantize_weight(lw.down)
        elif m.shared_gate_up is not None:
            m.shared_gate_up = quantize_weight(m.shared_gate_up)
            m.shared_down = quantize_weight(m.shared_down)
    return weights


def load_model(
    model_dir: str | Path,
    dtype: torch.dtype,
    device: torch.device,
    quantization: str | None = None,
) -> DiffusionTransformer:
    cfg = load_config(model_dir)
    check_quantization(cfg, quantization, device)
    weights = load_weights(model_dir, cfg, dtype, device)
    return DiffusionTransformer(cfg, quantize_linear_layers(weights, quantization), device)
