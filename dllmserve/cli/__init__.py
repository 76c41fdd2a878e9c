"""`dllmserve serve | scheduler | worker | gateway | generate`: one module per subcommand.

Each subcommand module has `register(subparsers)`, which adds its parser and sets `fn`. Every
flag's default can come from the environment (dllmserve.cli.options).
"""

from __future__ import annotations

import sys

from dllmserve import __version__
from dllmserve.cli import gateway, generate, scheduler, serve, worker
from dllmserve.cli.options import Parser
from dllmserve.errors import ListenError
from dllmserve.logs import configure
from dllmserve.tracing import setup as setup_tracing

DESCRIPTION = """\
dLLM-Serve: serve masked-diffusion language models (LLaDA, Dream), streaming every denoising
step over gRPC (and an OpenAI-compatible HTTP API). `dllmserve COMMAND --help` describes each
command; every flag can also be set by an environment variable, which its help names."""

EPILOG = """\
examples:
  dllmserve serve --demo                       # the built-in demo model, live demo once ready
  dllmserve generate "Repeat exactly: hello"   # in another terminal
  dllmserve serve --model /models/LLaDA-8B-Instruct --listen 0.0.0.0:50051
  dllmserve worker --help                      # the flags of one subcommand
docs: README.md, docs/service.md (API, configuration), docs/http.md (HTTP API),
docs/deploy.md (compose, Helm)
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
    p.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="text lines, or one JSON object per line",
    )
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
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
