"""The model an `EngineConfig` asks for, placed where it says: a checkpoint or a random shape."""

from __future__ import annotations

from pathlib import Path

import torch

from dllmserve.engine.config import EngineConfig
from dllmserve.errors import ValidationError
from dllmserve.models.loader import load_model
from dllmserve.models.shapes import SHAPES, random_model, shape_tokenizer
from dllmserve.models.transformer import DiffusionTransformer
from dllmserve.tokenizer import load_tokenizer


def placement(config: EngineConfig) -> tuple[torch.device, torch.dtype]:
    """The device (cuda when a GPU is there) and dtype (bf16 on a GPU, fp32 on the CPU)."""
    if config.device is not None:
        device = torch.device(config.device)
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if config.dtype is not None:
        return device, getattr(torch, config.dtype)
    return device, torch.bfloat16 if device.type == "cuda" else torch.float32


def load_checkpoint(
    model_dir: str | Path, config: EngineConfig
) -> tuple[DiffusionTransformer, object]:
    """The model and tokenizer of a local Hugging Face checkpoint folder."""
    device, dtype = placement(config)
    model = load_model(model_dir, dtype, device, config.quantization)
    return model, load_tokenizer(model_dir)


def load_random_shape(
    shape: str, config: EngineConfig, weight_seed: int = 0
) -> tuple[DiffusionTransformer, object]:
    """Random weights of a named shape (made on the device) with the shape's byte tokenizer."""
    if shape not in SHAPES:
        raise ValidationError("random_shape", f"must be one of {sorted(SHAPES)}, got {shape!r}")
    device, dtype = placement(config)
    cfg = SHAPES[shape]
    model = random_model(cfg, dtype, device, seed=weight_seed, quantization=config.quantization)
    return model, shape_tokenizer(cfg)
