"""Helpers shared by the subcommands: the model argument and the default target."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_TARGET = "localhost:50051"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def demo_model_dir() -> Path:
    """The built-in demo checkpoint: the trained tiny LLaDA shipped in the package."""
    from dllmserve.assets import default_model_path

    return default_model_path()


def resolve_model(model: str) -> str:
    return str(demo_model_dir()) if model in ("", "demo") else model


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="demo",
        help="checkpoint directory (Hugging Face layout), or 'demo' for the built-in tiny model",
    )
    p.add_argument(
        "--random-shape",
        default="",
        metavar="SHAPE",
        help="serve random weights of a named shape (llada-8b, dream-7b, tiny) with a byte-level "
        "tokenizer instead of --model: for benchmarks, whose speed depends only on shapes",
    )
