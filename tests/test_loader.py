"""The loader reads real-layout checkpoints and names what is wrong with a bad one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import resources

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dllmserve import LLM
from dllmserve.errors import CheckpointError, UnsupportedModelError
from dllmserve.models.config import load_config
from dllmserve.models.loader import expected_tensors, load_model


def test_sharded_checkpoints_load(llada_dir, dream_dir):
    for path, arch, n in (
        (llada_dir, "llada", 2 + 9 * 2 + 1),
        (dream_dir, "dream", 2 + 12 * 2 + 1),
    ):
        index = json.loads((path / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) == 2
        cfg = load_config(path)
        assert cfg.arch == arch and len(expected_tensors(cfg)) == n
        model = load_model(path, torch.float32, torch.device("cpu"))
        assert model.w.lm_head.shape == (cfg.vocab_size, cfg.d_model)
    assert load_config(dream_dir).shifted_logits and not load_config(llada_dir).shifted_logits


def _copy(src, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst)
    return dst


def _edit_tensor(ckpt, name, new):
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    shard = ckpt / index["weight_map"][name]
    tensors = load_file(str(shard))
    if new is None:
        del tensors[name]
    else:
        tensors[name] = new
    save_file(tensors, str(shard))


def test_missing_tensor_is_named(llada_dir, tmp_path):
    ckpt = _copy(llada_dir, tmp_path)
    name = "model.transformer.blocks.1.up_proj.weight"
    _edit_tensor(ckpt, name, None)
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    del index["weight_map"][name]
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=f"lacks tensor {name}"):
        LLM(ckpt)


def test_misshaped_tensor_is_named(dream_dir, tmp_path):
    ckpt = _copy(dream_dir, tmp_path)
    name = "model.layers.0.self_attn.k_proj.weight"
    _edit_tensor(ckpt, name, torch.zeros(3, 112))
    with pytest.raises(
        CheckpointError, match=rf"{name} has shape \[3, 112\], expected \[16, 112\]"
    ):
        LLM(ckpt)


def test_missing_shard_and_config(llada_dir, tmp_path):
    ckpt = _copy(llada_dir, tmp_path)
    (ckpt / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="shard model-00002-of-00002.safetensors"):
        LLM(ckpt)
    with pytest.raises(CheckpointError, match="config.json not found"):
        LLM(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "patch,match",
    [
        ({"alibi": True}, "alibi"),
        ({"block_type": "sequential"}, "block_type"),
        ({"block_group_size": 2}, "block_group_size"),
        ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, "unsupported architecture"),
        ({"layer_norm_type": None}, "lacks layer_norm_type: only 'rms'"),
        ({"layer_norm_type": "default"}, "has layer_norm_type='default': only 'rms'"),
        ({"layer_norm_type": "gemma_rms"}, "layer_norm_type='gemma_rms'"),
        ({"layer_norm_with_affine": False}, "layer_norm_with_affine=false"),
        ({"bias_for_layer_norm": True}, "bias_for_layer_norm"),
    ],
)
def test_unsupported_options_are_named(llada_dir, tmp_path, patch, match):
    ckpt = _copy(llada_dir, tmp_path)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.update(patch)
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match=match):
        LLM(ckpt)


def test_the_checkpoints_the_project_writes_say_rmsnorm(llada_dir):
    """As LLaDA-8B's config.json does: without the key the official code builds LayerNorm."""
    shipped = resources.files("dllmserve.assets") / "tiny-llada" / "config.json"
    for path in (llada_dir / "config.json", shipped):
        assert json.loads(path.read_text())["layer_norm_type"] == "rms"


def test_mask_id_comes_from_config(llada_dir, tmp_path):
    ckpt = _copy(llada_dir, tmp_path)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["mask_token_id"] = 5  # as iLLaDA does
    (ckpt / "config.json").write_text(json.dumps(cfg))
    llm = LLM(ckpt)
    assert llm.engine.tokens.mask == 5


def test_safetensors_carry_the_metadata_hugging_face_writes(llada_dir, dream_dir):
    """The official Dream code's from_pretrained refuses shards without {"format": "pt"}."""
    for path in (llada_dir, dream_dir):
        shards = sorted(path.glob("*.safetensors"))
        assert len(shards) == 2
        for shard in shards:
            with safe_open(str(shard), framework="pt") as fh:
                assert fh.metadata() == {"format": "pt"}


def test_a_config_with_auto_map_loads_without_prompting(llada_dir, dream_dir):
    """Real checkpoints' config.json name their modeling code in `auto_map`; transformers then
    asks "Do you wish to run the custom code? [y/N]" unless told not to. A server must never
    prompt: here stdin stays open, so a prompt would be printed and wait."""
    for path in (llada_dir, dream_dir):
        assert "auto_map" in json.loads((path / "config.json").read_text())
    code = (
        "import sys; from dllmserve.tokenizer import load_tokenizer; "
        "t = load_tokenizer(sys.argv[1]); print('mask', t.convert_tokens_to_ids('<|mdm_mask|>'))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(llada_dir)], stdin=subprocess.PIPE,
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "custom code" not in proc.stdout + proc.stderr
    assert proc.stdout.split() == ["mask", str(load_config(llada_dir).mask_token_id)]
