"""LLaDA-MoE checkpoints: read on `architectures` under either model_type, every tensor checked by
its official name and shape, unsupported options refused by key, clip_qkv and FP8 experts."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dllmserve import LLM, SamplingParams
from dllmserve.errors import CheckpointError, UnsupportedModelError
from dllmserve.models.config import load_config
from dllmserve.models.fp8 import Fp8Experts
from dllmserve.models.loader import expected_tensors
from dllmserve.testing.tiny_models import write_tiny_llada_moe
from tests.plain_moe import PlainMoeModel
from tests.plain_reference import official_generate


@pytest.fixture(scope="module")
def moe_dir(tmp_path_factory):
    return write_tiny_llada_moe(
        tmp_path_factory.mktemp("moe"), seed=6, n_layers=2, moe_layer_freq=[0, 1],
        n_kv_heads=2, expert_bias=True, partial_rotary_factor=0.5,
    )  # fmt: skip


def _copy(src, tmp_path, **config):
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst)
    if config:
        raw = json.loads((dst / "config.json").read_text())
        raw.update(config)
        (dst / "config.json").write_text(json.dumps(raw))
    return dst


def _edit_tensor(ckpt, name, new):
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    shard = ckpt / index["weight_map"][name]
    tensors = load_file(str(shard))
    if new is None:
        del tensors[name]
        del index["weight_map"][name]
        (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    else:
        tensors[name] = new
    save_file(tensors, str(shard), metadata={"format": "pt"})


def test_official_layout_loads_under_either_model_type(moe_dir, tmp_path):
    raw = json.loads((moe_dir / "config.json").read_text())
    assert raw["model_type"] == "llada" and "layer_norm_type" not in raw  # as published
    assert raw["auto_map"]["AutoModel"] == "modeling_lladamoe.LLaDAMoEModelLM"
    cfg = load_config(moe_dir)
    names = expected_tensors(cfg)
    # embed, norm, head; 8 a layer (norms, q/k/v/o, q/k norm); dense MLP 3; router, bias,
    # 8 experts x 3, shared expert 3
    assert len(names) == 3 + 2 * 8 + 3 + (2 + 8 * 3 + 3)
    assert names["model.layers.1.mlp.experts.7.down_proj.weight"] == (64, 32)
    assert names["model.layers.1.shared_expert.gate_proj.weight"] == (48, 64)
    assert names["model.layers.0.self_attn.q_norm.weight"] == (16,)
    assert cfg.moe.moe_layers == (False, True) and cfg.rope_dim == 8 and cfg.arch == "llada"
    index = json.loads((moe_dir / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(names)
    for shard in set(index["weight_map"].values()):
        with safe_open(str(moe_dir / shard), framework="pt") as fh:
            assert fh.metadata() == {"format": "pt"}
    other = _copy(moe_dir, tmp_path, model_type="lladamoe")
    assert load_config(other) == cfg


@pytest.mark.parametrize(
    "patch,match",
    [
        ({"moe_router_score_function": "sigmoid"}, "moe_router_score_function='sigmoid'"),
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling="),
        ({"attention_bias": True}, "attention_bias=True"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
        ({"partial_rotary_factor": 0.1}, "partial_rotary_factor=0.1"),
    ],
)
def test_unsupported_options_are_refused_by_key(moe_dir, tmp_path, patch, match):
    with pytest.raises(UnsupportedModelError, match=match):
        LLM(_copy(moe_dir, tmp_path, **patch))


@pytest.mark.parametrize(
    "patch,match",
    [
        ({"moe_layer_freq": [1]}, "'moe_layer_freq' must list 0 .* for each of the 2 layers"),
        ({"num_experts_per_tok": 9}, "num_experts_per_tok 9 exceeds num_experts 8"),
        ({"num_experts": None}, "'num_experts' must be a positive integer"),
        ({"rope_theta": None}, "lacks the required key 'rope_theta'"),
    ],
)
def test_bad_moe_configs_name_the_key(moe_dir, tmp_path, patch, match):
    with pytest.raises(CheckpointError, match=match):
        LLM(_copy(moe_dir, tmp_path, **patch))


def test_missing_and_misshaped_expert_tensors_are_named(moe_dir, tmp_path):
    ckpt = _copy(moe_dir, tmp_path)
    name = "model.layers.1.mlp.experts.3.up_proj.weight"
    _edit_tensor(ckpt, name, torch.zeros(31, 64))
    with pytest.raises(CheckpointError, match=rf"{name} has shape \[31, 64\], expected \[32, 64\]"):
        LLM(ckpt)
    bias = "model.layers.1.mlp.expert_bias"
    _edit_tensor(ckpt, bias, None)
    with pytest.raises(CheckpointError, match=f"lacks tensor {bias}"):
        LLM(ckpt)


def test_clip_qkv_matches_official(moe_dir, tmp_path):
    """clip_qkv clamps q, k (after their norm) and v, as the official attention does."""
    ckpt = _copy(moe_dir, tmp_path, clip_qkv=0.5)
    prompt = [10, 20, 30, 40, 50]
    params = SamplingParams(gen_length=16, block_length=8, steps=8, stop_at_eos=False)
    got = LLM(ckpt).generate([prompt], params, use_tqdm=False)[0]["token_ids"]
    assert got == official_generate(PlainMoeModel(ckpt), prompt, 16, 8, 8)
    unclipped = LLM(moe_dir).generate([prompt], params, use_tqdm=False)[0]["token_ids"]
    assert got != unclipped  # the clip is tight enough to matter


def test_fp8_quantizes_every_expert(moe_dir):
    """(How close FP8 experts stay to the exact layer: tests/test_moe_layer.py.)"""
    llm = LLM(moe_dir, quantization="fp8")
    moe = llm.engine.model.w.layers[1].moe
    assert isinstance(moe.gate_up, Fp8Experts) and moe.gate_up.scale.shape == (8, 64)
    assert isinstance(moe.down, Fp8Experts) and moe.down.scale.shape == (8, 64)
    assert moe.router.dtype == torch.float32  # the router decides: not quantized
    params = SamplingParams(
        gen_length=16, block_length=8, steps=8, temperature=0.5, seed=2, stop_at_eos=False
    )
    prompts = [[10, 20, 30], list(range(40, 70)), [5, 6]]
    alone = llm.generate(prompts[:1], params, use_tqdm=False)[0]["token_ids"]
    mixed = llm.generate(prompts, params, use_tqdm=False)
    assert llm.engine.tokens.mask not in alone
    assert mixed[0]["token_ids"] == alone  # activations quantized per token: batch invariant


def test_keys_the_official_layer_ignores_change_nothing(moe_dir, tmp_path):
    """The official block hard-codes norm_topk_prob=False and never reads the routed scaling or
    the router groups: accepted, and the tokens stay the same."""
    ignored = dict(norm_topk_prob=True, routed_scaling_factor=2.5, router_num_group=4,
                   router_topk_group=2, moe_router_score_function=None)  # fmt: skip
    ckpt = _copy(moe_dir, tmp_path, **ignored)
    params = SamplingParams(gen_length=16, block_length=8, steps=8, stop_at_eos=False)
    outs = [LLM(p).generate([[9, 8, 7]], params, use_tqdm=False)[0]["token_ids"]
            for p in (moe_dir, ckpt)]  # fmt: skip
    assert outs[0] == outs[1]


def test_mask_id_defaults_to_the_model_cards_when_the_config_omits_it(moe_dir, tmp_path):
    raw = json.loads((moe_dir / "config.json").read_text())
    assert load_config(moe_dir).mask_token_id == raw["mask_token_id"]  # the config's, if any
    del raw["mask_token_id"], raw["eos_token_id"]
    ckpt = _copy(moe_dir, tmp_path)
    (ckpt / "config.json").write_text(json.dumps(raw))
    cfg = load_config(ckpt)
    assert (cfg.mask_token_id, cfg.eos_token_id) == (156895, 156892)
