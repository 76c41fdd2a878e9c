"""Named model shapes with random weights, for benchmarks (speed depends only on shapes)."""

from __future__ import annotations

import torch

from dllmserve.models.config import ModelConfig
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
}


def random_model(
    cfg: ModelConfig, dtype: torch.dtype, device: torch.device, seed: int = 0
) -> DiffusionTransformer:
    """A model of `cfg`'s shape with scaled Gaussian weights, generated on the device."""
    gen = torch.Generator(device=device).manual_seed(seed)

    def w(*shape: int) -> torch.Tensor:
        t = torch.empty(shape, dtype=dtype, device=device)
        return t.normal_(0.0, shape[-1] ** -0.5, generator=gen)

    def ones(n: int) -> torch.Tensor:
        return torch.ones(n, dtype=dtype, device=device)

    d, hd, mlp = cfg.d_model, cfg.head_dim, cfg.mlp_hidden
    qkv_rows = (cfg.n_heads + 2 * cfg.n_kv_heads) * hd
    layers = [
        LayerWeights(
            attn_norm=ones(d),
            qkv=w(qkv_rows, d),
            qkv_bias=torch.zeros(qkv_rows, dtype=dtype, device=device) if cfg.qkv_bias else None,
            o=w(d, cfg.n_heads * hd),
            mlp_norm=ones(d),
            gate_up=w(2 * mlp, d),
            down=w(d, mlp),
        )
        for _ in range(cfg.n_layers)
    ]
    weights = ModelWeights(
        embed=w(cfg.vocab_size, d),
        layers=layers,
        final_norm=ones(d),
        lm_head=w(cfg.vocab_size, d),
    )
    return DiffusionTransformer(cfg, weights, device)
