"""LLaDA2 checkpoints (`LLaDA2MoeModelLM`): the official layout read by name and shape, the mask id
from the tokenizer when config.json has none, unsupported options refused by key, and the
engine's forward under the block-causal mask equal to the official model's."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from dllmserve.errors import CheckpointError, UnsupportedModelError
from dllmserve.models.config import load_config
from dllmserve.models.loader import expected_tensors, load_model
from dllmserve.testing.tiny_llada2 import write_tiny_llada2
from tests.plain_llada2 import PlainLlada2


@pytest.fixture(scope="module")
def l2_dir(tmp_path_factory):
    return write_tiny_llada2(tmp_path_factory.mktemp("l2"), seed=2, logit_scale=12.0)


def _copy(src, tmp_path, **config):
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst)
    raw = json.loads((dst / "config.json").read_text())
    raw.update(config)
    (dst / "config.json").write_text(json.dumps(raw))
    return dst


def test_config_and_official_names(l2_dir):
    raw = json.loads((l2_dir / "config.json").read_text())
    assert "mask_token_id" not in raw  # as published: the tokenizer's <|mask|>
    cfg = load_config(l2_dir)
    tok = json.loads((l2_dir / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in tok["added_tokens"]}
    assert (cfg.mask_token_id, cfg.eos_token_id) == (ids["<|mask|>"], raw["eos_token_id"])
    assert cfg.block_diffusion and cfg.default_block_length == 32
    assert (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.rotary_dim) == (4, 2, 16, 8)
    assert cfg.moe.moe_layers == (False, True, True) and cfg.moe.router == "sigmoid_group"
    assert cfg.moe.shared_hidden == raw["moe_intermediate_size"]
    names = expected_tensors(cfg)
    assert names["model.layers.0.attention.query_key_value.weight"] == ((4 + 2 * 2) * 16, 64)
    assert names["model.layers.1.mlp.gate.expert_bias"] == (8,)
    assert "model.layers.1.mlp.shared_experts.down_proj.weight" in names
    assert "model.layers.0.mlp.gate_proj.weight" in names  # first_k_dense_replace = 1
    stored = {}
    for f in l2_dir.glob("*.safetensors"):
        stored.update({k: tuple(v.shape) for k, v in load_file(str(f)).items()})
    assert stored == names


def test_mask_id_in_config_wins(l2_dir, tmp_path):
    assert load_config(_copy(l2_dir, tmp_path, mask_token_id=7)).mask_token_id == 7


@pytest.mark.parametrize(
    "key,value",
    [("use_bias", True), ("use_qkv_bias", True), ("norm_head", True), ("hidden_act", "gelu"),
     ("score_function", "softmax"), ("rope_scaling", {"type": "linear", "factor": 2.0}),
     ("use_sliding_window", True)],
)  # fmt: skip
def test_unsupported_options_refused_by_key(l2_dir, tmp_path, key, value):
    with pytest.raises(UnsupportedModelError, match=key):
        load_config(_copy(l2_dir, tmp_path, **{key: value}))


@pytest.mark.parametrize(
    "config,match",
    [({"n_group": 3}, "n_group"), ({"num_experts_per_tok": 9}, "num_experts_per_tok"),
     ({"first_k_dense_replace": 9}, "first_k_dense_replace"), ({"vocab_size": 0}, "vocab_size")],
)  # fmt: skip
def test_bad_keys_named(l2_dir, tmp_path, config, match):
    with pytest.raises(CheckpointError, match=match):
        load_config(_copy(l2_dir, tmp_path, **config))


def test_no_mask_id_anywhere_is_named(l2_dir, tmp_path):
    ckpt = _copy(l2_dir, tmp_path)
    tok = json.loads((ckpt / "tokenizer.json").read_text())
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["content"] != "<|mask|>"]
    (ckpt / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(CheckpointError, match="mask_token_id"):
        load_config(ckpt)


def test_missing_or_misshaped_tensor_named(l2_dir, tmp_path):
    ckpt = _copy(l2_dir, tmp_path)
    name = "model.layers.2.mlp.gate.expert_bias"
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    shard = ckpt / index["weight_map"][name]
    tensors = load_file(str(shard))
    tensors[name] = torch.zeros(5)
    save_file(tensors, str(shard), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=name):
        load_model(ckpt, torch.float32, torch.device("cpu"))
    del tensors[name], index["weight_map"][name]
    save_file(tensors, str(shard), metadata={"format": "pt"})
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=name):
        load_model(ckpt, torch.float32, torch.device("cpu"))


class _BlockCausal:
    """Plain block-causal attention over one packed sequence (the official mask)."""

    def __init__(self, block: int, n_heads: int, n_kv: int) -> None:
        self.block, self.group = block, n_heads // n_kv

    def select(self, layer, q, k, v) -> None:
        return None

    def kv_target(self, layer) -> None:
        return None

    def __call__(self, layer, q, k, v):
        L, hd = q.shape[0], q.shape[-1]
        blk = torch.arange(L) // self.block
        mask = torch.where(blk[None] <= blk[:, None], 0.0, -torch.inf)
        k, v = k.repeat_interleave(self.group, 1), v.repeat_interleave(self.group, 1)
        s = torch.einsum("qhd,khd->hqk", q, k) / hd**0.5 + mask
        return torch.einsum("hqk,khd->qhd", torch.softmax(s, -1), v)


def test_forward_equals_the_official_model(l2_dir):
    torch.manual_seed(0)
    model = load_model(l2_dir, torch.float32, torch.device("cpu"))
    ids = torch.randint(0, 256, (21,))
    hidden = model.forward(ids, torch.arange(21), _BlockCausal(8, 4, 2))
    ours = model.logits(hidden)
    ref = PlainLlada2(l2_dir).forward(ids, 8)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))


def test_fp8_experts_quantizes_the_routed_experts_and_nothing_else(l2_dir, monkeypatch):
    """quantization="fp8-experts": the forward equals the exact model's with only the routed
    experts' weights quantized (attention, shared expert, dense layer and router untouched),
    and the norm before each MoE layer hands the experts FP8 rows with their values (one
    quantization for both readers; the shared expert reads the values)."""
    from dllmserve.models import moe
    from dllmserve.models.fp8 import Fp8Experts, Fp8Rows, quantize_experts

    cpu = torch.device("cpu")
    model = load_model(l2_dir, torch.float32, cpu, quantization="fp8-experts")
    layers = model.w.layers
    assert [lw.moe is None for lw in layers] == [True, False, False]
    for lw in layers:
        assert all(isinstance(t, torch.Tensor) for t in (lw.qkv, lw.o))
        if lw.moe is not None:
            m = lw.moe
            assert isinstance(m.gate_up, Fp8Experts) and isinstance(m.down, Fp8Experts)
            assert all(isinstance(t, torch.Tensor) for t in (m.shared_gate_up, m.shared_down))
    ids = torch.randint(0, 256, (21,), generator=torch.Generator().manual_seed(4))
    pos = torch.arange(21)
    seen = []
    real = moe.experts
    monkeypatch.setattr(moe, "experts", lambda x, *a: seen.append(x) or real(x, *a))
    got = model.logits(model.forward(ids, pos, _BlockCausal(8, 4, 2)))
    assert len(seen) == 2 and all(isinstance(x, Fp8Rows) and x.values is not None for x in seen)

    def experts_in_fp8(x, gate_up, down, *rest):  # the exact model, its experts quantized
        return real(x, quantize_experts(gate_up), quantize_experts(down), *rest)

    exact = load_model(l2_dir, torch.float32, cpu)
    want_exact = exact.logits(exact.forward(ids, pos, _BlockCausal(8, 4, 2)))
    monkeypatch.setattr(moe, "experts", experts_in_fp8)
    want = exact.logits(exact.forward(ids, pos, _BlockCausal(8, 4, 2)))
    assert torch.equal(got, want)
    assert not torch.equal(got, want_exact)  # the experts really are quantized


def test_fp8_experts_generates_batch_invariant_tokens(l2_dir):
    from dllmserve import LLM, SamplingParams

    llm = LLM(l2_dir, quantization="fp8-experts")
    params = SamplingParams(
        gen_length=12, block_length=4, steps_per_block=2, temperature=0.7, seed=3,
        stop_at_eos=False,
    )  # fmt: skip
    prompts = [[10, 20, 30], list(range(40, 61)), [5, 6]]
    alone = llm.generate(prompts[:1], params, use_tqdm=False)[0]["token_ids"]
    mixed = llm.generate(prompts, params, use_tqdm=False)
    assert len(alone) == 12 and llm.engine.tokens.mask not in alone
    assert mixed[0]["token_ids"] == alone
