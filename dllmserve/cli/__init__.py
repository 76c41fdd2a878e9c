"""`dllmserve serve | scheduler | worker | gateway | generate`: one module per subcommand.

Each subcommand module has `register(subparsers)`, which adds its parser and sets `fn`.
"""

from __future__ import annotations

import argparse
import sys

from dllmserve.cli import gateway, generate, scheduler, serve, worker
from dllmserve.cli.common import env
from dllmserve.errors import ListenError
from dllmserve.logs import configure
from dllmserve.tracing import setup as setup_tracing


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dllmserve",
        description="dLLM-Serve: serve masked-diffusion language models (LLaDA, Dream).",
    )
    p.add_argument("--log-level", default=env("DLLMSERVE_LOG_LEVEL", "INFO"))
    p.add_argument(
        "--log-format",
        default=env("DLLMSERVE_LOG_FORMAT", "text"),
        choices=["text", "json"],
        help="text lines, or one JSON object per line (env DLLMSERVE_LOG_FORMAT)",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    for module in (serve, scheduler, worker, gateway, generate):
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    configure(a.log_level, a.log_format)
    if a.cmd in ("scheduler", "worker", "gateway"):
        setup_tracing(f"dllmserve-{a.cmd}")
    try:
        return int(a.fn(a) or 0)
    except ListenError as e:  # a port taken or malformed: say which flag, no traceback
        print(f"dllmserve {a.cmd}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
