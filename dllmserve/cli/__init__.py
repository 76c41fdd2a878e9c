"""`dllmserve serve | scheduler | worker | gateway | generate`: one module per subcommand.

Each subcommand module has `register(subparsers)`, which adds its parser and sets `fn`. Every
flag's default can come from the environment (dllmserve.cli.options).
"""

from __future__ import annotations

import sys

from dllmserve import __version__
from dllmserve.cli import gateway, generate, scheduler, serve, worker
from dllmserve.cli.common import EXTRA_MODULES, EXTRAS, OPERATOR_EXIT, OperatorError
from dllmserve.cli.options import Parser
from dllmserve.errors import CheckpointError, ListenError, UnsupportedModelError
from dllmserve.logs import configure
from dllmserve.tracing import setup as setup_tracing

DESCRIPTION = """\
dLLM-Serve: serve masked-diffusion language models (LLaDA, Dream), streaming every denoising
step over gRPC (and an OpenAI-compatible HTTP API). `dllmserve COMMAND --help` describes each
command; every flag can also be set by an environment variable, which its help names."""

EPILOG = """\
examples:
  dllmserve serve --demo                       # the built-in demo model, live demo once ready
  dllmserve generate "Repeat exactly: serving diffusion models"   # in another terminal
  DLLMSERVE_AUTH_TOKEN=s3cret dllmserve serve --model /models/LLaDA-8B-Instruct \\
      --listen 0.0.0.0:50051                   # every interface: a token (or --insecure)
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
    try:
        if a.cmd in ("scheduler", "worker", "gateway"):
            setup_tracing(f"dllmserve-{a.cmd}")
        return int(a.fn(a) or 0)
    except (OperatorError, ListenError, CheckpointError, UnsupportedModelError) as e:
        print(f"dllmserve {a.cmd}: {e}", file=sys.stderr)  # one line: what and what to do
        return OPERATOR_EXIT
    except KeyboardInterrupt:  # Ctrl-C (generate, a command still starting): no traceback
        print(f"dllmserve {a.cmd}: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as e:
        if (e.name or "").partition(".")[0] not in EXTRA_MODULES:
            raise  # not a missing extra: a bug, with its traceback
        print(f"dllmserve {a.cmd}: {missing_extra(a.cmd, e.name)}", file=sys.stderr)
        return OPERATOR_EXIT


def missing_extra(cmd: str, module: str | None) -> str:
    """What to install when the client-only install runs a service command."""
    extra = EXTRAS.get(cmd, "all")
    return (
        f"needs the {extra} extra (no module {module!r}): install dllmserve[{extra}] "
        f"(from a clone of the repository: pip install -e '.[{extra}]')"
    )


if __name__ == "__main__":
    sys.exit(main())
