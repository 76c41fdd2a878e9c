"""Helpers shared by the subcommands: environment defaults and the model argument."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_TARGET = "localhost:50051"


def env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def demo_model_dir() -> Path:
    """The built-in demo checkpoint: the trained tiny LLaDA shipped in the package."""
    from dllmserve.assets import default_model_path

    return default_model_path()


def resolve_model(model: str) -> str:
    return str(demo_model_dir()) if model in ("", "demo") else model


def add_random_shape_arg(p) -> None:
    p.add_argument(
        "--random-shape",
        default="",
        metavar="SHAPE",
        help="serve random weights of a named shape (llada-8b, dream-7b, tiny) with a byte-level "
        "tokenizer instead of --model: for benchmarks, whose speed depends only on shapes",
    )
