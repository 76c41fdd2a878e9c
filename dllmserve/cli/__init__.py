"""`dllmserve serve | scheduler | worker | generate`: one module per subcommand.

Each subcommand module has `register(subparsers)`, which adds its parser and sets `fn`. Every
flag's default can come from the environment (dllmserve.cli.options).
"""

from __future__ import annotations

import logging
import sys

from dllmserve import __version__
from dllmserve.cli import generate, scheduler, serve, worker
from dllmserve.cli.options import Parser

DESCRIPTION = """\
dLLM-Serve: serve masked-diffusion language models (LLaDA, Dream), streaming every denoising
step over gRPC. `dllmserve COMMAND --help` describes each command; every flag can also be set
by an environment variable, which its help names.
"""

EPILOG = """\
examples:
  dllmserve serve --demo                       # the built-in demo model, live demo once ready
  dllmserve generate "Repeat exactly: hello"   # in another terminal
  dllmserve serve --model /models/LLaDA-8B-Instruct --listen 0.0.0.0:50051
  dllmserve worker --help                      # the flags of one subcommand
docs: README.md, docs/service.md (API, configuration), docs/deploy.md (compose, Helm)
"""


def build_parser() -> Parser:
    p = Parser(prog="dllmserve", description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("--version", action="version", version=f"dllmserve {__version__}")
    p.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="log messages of this level and above",
    )
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for module in (serve, scheduler, worker, generate):
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, a.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(a.fn(a) or 0)


if __name__ == "__main__":
    sys.exit(main())
