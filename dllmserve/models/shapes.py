"""Named model shapes with random weights, for benchmarks (speed depends only on shapes).

`Engine.from_random_shape("llada-8b")` is an engine on such a model with a byte-level
tokenizer: what a worker serves with `dllmserve worker --random-shape llada-8b`, no checkpoint
needed.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from dllmserve.models.config import ModelConfig, MoeConfig
from dllmserve.models.loader import check_quantization, quantize_linear_layers
from dllmserve.models.moe import MoeWeights
from dllmserve.models.transformer import DiffusionTransformer, LayerWeights, ModelWeights

SHAPES: dict[str, ModelConfig] = {
    "llada-8b": ModelConfig(
        arch="llada",
        d_model=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=32,
        head_dim=128,
        mlp_hidden=12288,
        vocab_size=126464,
        rope_theta=500000.0,
        rms_eps=1e-5,
        max_len=4096,
        mask_token_id=126336,
        eos_token_id=126081,
        qkv_bias=False,
        tied_head=False,
        shifted_logits=False,
        rope_in_fp32=True,
    ),
    "dream-7b": ModelConfig(
        arch="dream",
        d_model=3584,
        n_layers=28,
        n_heads=28,
        n_kv_heads=4,
        head_dim=128,
        mlp_hidden=18944,
        vocab_size=152064,
        rope_theta=1e6,
        rms_eps=1e-6,
        max_len=4096,
        mask_token_id=151666,
        eos_token_id=151643,
        qkv_bias=True,
        tied_head=False,
        shifted_logits=True,
        rope_in_fp32=False,
    ),
    "tiny": ModelConfig(
        arch="llada",
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=4,
        head_dim=16,
        mlp_hidden=128,
        vocab_size=320,
        rope_theta=500000.0,
        rms_eps=1e-5,
        max_len=4096,
        mask_token_id=258,
        eos_token_id=257,
        qkv_bias=False,
        tied_head=False,
        shifted_logits=False,
        rope_in_fp32=True,
    ),
    # LLaDA-MoE-7B-A1B as published (inclusionAI/LLaDA-MoE-7B-A1B-Base and -Instruct,
    # config.json; docs/models.md): every layer MoE, 64 experts top-8, no shared expert
    "llada-moe-7b": ModelConfig(
        arch="llada",
        d_model=2048,
        n_layers=16,
        n_heads=16,
        n_kv_heads=16,
        head_dim=128,
        mlp_hidden=0,  # dense_intermediate_size 8192 is used by no layer
        vocab_size=157184,
        rope_theta=50000.0,
        rms_eps=1e-5,
        max_len=8192,
        mask_token_id=156895,
        eos_token_id=156892,
        qkv_bias=False,
        tied_head=False,
        shifted_logits=False,
        rope_in_fp32=False,
        qk_norm=True,
        moe=MoeConfig(
            num_experts=64,
            top_k=8,
            expert_hidden=1024,
            shared_hidden=0,
            moe_layers=(True,) * 16,
            router="softmax",
            expert_bias=False,
        ),
    ),
    # LLaDA2.0-mini (docs/models.md; rope_theta and max_len do not change its speed): block
    # diffusion, GQA, half-width RoPE, QK norm, the
    # first layer dense, then 256 experts top-8 in 8 groups (best 4), a shared expert
    "llada2-mini": ModelConfig(
        arch="llada2",
        d_model=2048,
        n_layers=20,
        n_heads=16,
        n_kv_heads=4,
        head_dim=128,
        mlp_hidden=5120,
        vocab_size=157184,
        rope_theta=600000.0,
        rms_eps=1e-6,
        max_len=8192,
        mask_token_id=156895,
        eos_token_id=156892,
        qkv_bias=False,
        tied_head=False,
        shifted_logits=False,
        rope_in_fp32=False,
        qk_norm=True,
        rotary_dim=64,
        moe=MoeConfig(
            num_experts=256,
            top_k=8,
            expert_hidden=512,
            shared_hidden=512,
            moe_layers=(False,) + (True,) * 19,
            router="sigmoid_group",
            expert_bias=True,
            n_group=8,
            topk_group=4,
            routed_scaling=2.5,
        ),
        block_diffusion=True,
        default_block_length=32,
    ),
    # a CPU smoke shape of the same kind: a dense and an MoE layer, a shared expert, GQA,
    # half-width RoPE
    "tiny-moe": ModelConfig(
        arch="llada",
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        head_dim=16,
        mlp_hidden=128,
        vocab_size=320,
        rope_theta=50000.0,
        rms_eps=1e-5,
        max_len=4096,
        mask_token_id=258,
        eos_token_id=257,
        qkv_bias=False,
        tied_head=False,
        shifted_logits=False,
        rope_in_fp32=False,
        qk_norm=True,
        rotary_dim=8,
        moe=MoeConfig(
            num_experts=8,
            top_k=2,
            expert_hidden=32,
            shared_hidden=48,
            moe_layers=(False, True),
            router="softmax",
            expert_bias=False,
        ),
    ),
    # a CPU smoke shape of LLaDA2's kind
    "tiny-llada2": ModelConfig(
        arch="llada2",
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        head_dim=16,
        mlp_hidden=128,
        vocab_size=320,
        rope_theta=600000.0,
        rms_eps=1e-6,
        max_len=2048,
        mask_token_id=257,
        eos_token_id=256,
        qkv_bias=False,
        tied_head=False,
        shifted_logits=False,
        rope_in_fp32=False,
        qk_norm=True,
        rotary_dim=8,
        moe=MoeConfig(
            num_experts=8,
            top_k=2,
            expert_hidden=32,
            shared_hidden=32,
            moe_layers=(False, True),
            router="sigmoid_group",
            expert_bias=True,
            n_group=2,
            topk_group=1,
            routed_scaling=2.5,
        ),
        block_diffusion=True,
        default_block_length=32,
    ),
}


def random_model(
    cfg: ModelConfig,
    dtype: torch.dtype,
    device: torch.device,
    seed: int = 0,
    quantization: str | None = None,
) -> DiffusionTransformer:
    """A model of `cfg`'s shape with scaled Gaussian weights, generated on the device."""
    check_quantization(cfg, quantization, device)
    gen = torch.Generator(device=device).manual_seed(seed)

    def w(*shape: int) -> torch.Tensor:
        t = torch.empty(shape, dtype=dtype, device=device)
        return t.normal_(0.0, shape[-1] ** -0.5, generator=gen)

    def ones(n: int) -> torch.Tensor:
        return torch.ones(n, dtype=dtype, device=device)

    d, hd, mlp = cfg.d_model, cfg.head_dim, cfg.mlp_hidden
    qkv_rows = (cfg.n_heads + 2 * cfg.n_kv_heads) * hd
    moe = cfg.moe

    def moe_weights() -> MoeWeights:
        e, i, s = moe.num_experts, moe.expert_hidden, moe.shared_hidden
        return MoeWeights(
            router=w(e, d),
            expert_bias=torch.zeros(e, device=device) if moe.expert_bias else None,
            gate_up=w(e, 2 * i, d),  # made on the device, every expert's (memory sizing)
            down=w(e, d, i),
            shared_gate_up=w(2 * s, d) if s else None,
            shared_down=w(d, s) if s else None,
        )

    layers = []
    for layer in range(cfg.n_layers):
        is_moe = moe is not None and moe.moe_layers[layer]
        layers.append(
            LayerWeights(
                attn_norm=ones(d),
                qkv=w(qkv_rows, d),
                qkv_bias=torch.zeros(qkv_rows, dtype=dtype, device=device)
                if cfg.qkv_bias
                else None,
                o=w(d, cfg.n_heads * hd),
                mlp_norm=ones(d),
                gate_up=None if is_moe else w(2 * mlp, d),
                down=None if is_moe else w(d, mlp),
                moe=moe_weights() if is_moe else None,
                q_norm=ones(hd) if cfg.qk_norm else None,
                k_norm=ones(hd) if cfg.qk_norm else None,
            )
        )
    weights = ModelWeights(
        embed=w(cfg.vocab_size, d),
        layers=layers,
        final_norm=ones(d),
        lm_head=w(cfg.vocab_size, d),
    )
    return DiffusionTransformer(cfg, quantize_linear_layers(weights, quantization), device)


def shape_tokenizer(cfg: ModelConfig):
    """A byte-level fast tokenizer (any text encodes, one token per byte) with the special tokens
    and chat template of `cfg.arch`, for a random-weight model of that shape.

    The 256 byte tokens take ids 0-255; the mask and EOS tokens take the shape's own ids, the
    other special tokens the next free ids from 256 on. Every other id of the vocabulary decodes
    to nothing. For "tiny" this is exactly the tokenizer of the tiny test checkpoints.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from dllmserve.models.byte_tokenizer import (
        DREAM_CHAT_TEMPLATE,
        DREAM_SPECIALS,
        LLADA2_CHAT_TEMPLATE,
        LLADA2_SPECIALS,
        LLADA_CHAT_TEMPLATE,
        LLADA_SPECIALS,
    )
    from dllmserve.tokenizer import load_tokenizer

    llada = cfg.arch == "llada"
    specials = LLADA_SPECIALS if llada else DREAM_SPECIALS
    template = LLADA_CHAT_TEMPLATE if llada else DREAM_CHAT_TEMPLATE
    if cfg.arch == "llada2":
        specials, template = LLADA2_SPECIALS, LLADA2_CHAT_TEMPLATE
    mask = "<|mdm_mask|>" if llada else "<|mask|>"
    bos = "<|startoftext|>" if llada else None
    eos = "<|endoftext|>"
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    wanted = {mask: cfg.mask_token_id, eos: cfg.eos_token_id}
    taken = {i for name, i in wanted.items() if len(alphabet) <= i < cfg.vocab_size}
    free = (i for i in range(len(alphabet), cfg.vocab_size) if i not in taken)
    for name in specials:
        want = wanted.get(name)
        vocab[name] = want if want in taken else next(free)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)  # already in the vocabulary: they keep their ids
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": eos,
        "mask_token": mask,
        "chat_template": template,
        "model_max_length": cfg.max_len,
    }
    # Loaded the way a checkpoint's tokenizer is (the same code path on every transformers).
    with tempfile.TemporaryDirectory(prefix="dllmserve-tok-") as d:
        tok.save(str(Path(d) / "tokenizer.json"))
        (Path(d) / "tokenizer_config.json").write_text(json.dumps(config))
        return load_tokenizer(d)
