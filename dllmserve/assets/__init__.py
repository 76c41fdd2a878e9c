"""Checkpoints shipped inside the package: the trained tiny LLaDA that demos and tests use."""

from __future__ import annotations

from pathlib import Path

TINY_LLADA = "tiny-llada"


def default_model_path() -> Path:
    """The shipped tiny LLaDA checkpoint (config.json, model.safetensors, tokenizer, card).

    It is the default model of `dllmserve serve` / `generate` and of the README demo: a real
    trained checkpoint, so the demo prints readable text instead of random tokens.
    """
    return Path(__file__).resolve().parent / TINY_LLADA
