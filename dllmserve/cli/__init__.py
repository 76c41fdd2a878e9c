"""`dllmserve serve | scheduler | worker | generate`: one module per subcommand.

Each subcommand module has `register(subparsers)`, which adds its parser and sets `fn`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from dllmserve.cli import generate, scheduler, serve, worker
from dllmserve.cli.common import env


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dllmserve",
        description="dLLM-Serve: serve masked-diffusion language models (LLaDA, Dream).",
    )
    p.add_argument("--log-level", default=env("DLLMSERVE_LOG_LEVEL", "INFO"))
    sub = p.add_subparsers(dest="cmd", required=True)
    for module in (serve, scheduler, worker, generate):
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(a.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(a.fn(a) or 0)


if __name__ == "__main__":
    sys.exit(main())
