"""`dllmserve gateway`: the OpenAI-compatible HTTP API in front of the schedulers."""

from __future__ import annotations

import argparse

from dllmserve.cli.common import DEFAULT_TARGET, add_insecure_arg, check_listen


def _positive(kind: type):
    """An argparse type: a number above 0 (a zero or negative timeout or limit is a mistake)."""

    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its "invalid ..." message
    return parse


def cmd_gateway(a: argparse.Namespace) -> int:
    from dllmserve.gateway.app import GatewayConfig
    from dllmserve.gateway.server import run

    check_listen(a.listen, a.insecure, "the gateway checks no tokens itself")
    targets = [t.strip() for t in a.target.split(",") if t.strip()]
    origins = [o.strip() for o in a.allowed_origins.split(",") if o.strip()]
    run(
        GatewayConfig(
            targets=targets,
            listen=a.listen,
            tls=a.tls,
            ca=a.ca,
            max_body_bytes=a.max_body_bytes,
            retries=a.retries,
            rpc_timeout_s=a.rpc_timeout,
            header_timeout_s=a.header_timeout,
            body_timeout_s=a.body_timeout,
            max_connections=a.max_connections,
            allowed_origins=origins,
        )
    )
    return 0


DESCRIPTION = """\
The OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, /v1/models, /health,
/metrics, and a playground page at /) in front of one or more schedulers, over their gRPC API:
no state of its own, so any number can run. docs/http.md has the endpoints."""

EXAMPLES = """\
examples:
  dllmserve gateway --target scheduler:50051              # on 127.0.0.1:8000
  dllmserve gateway --target scheduler:50051 --listen 0.0.0.0:8000 --insecure
  dllmserve gateway --target sched-a:50051,sched-b:50051   # re-attaches through the other
  curl localhost:8000/v1/models"""


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser(
        "gateway",
        help="the OpenAI-compatible HTTP API in front of the schedulers",
        description=DESCRIPTION,
        epilog=EXAMPLES,
    )
    g.add_argument(
        "--target",
        default=DEFAULT_TARGET,
        help="scheduler gRPC address(es), comma-separated (the others serve re-attaches)",
    )
    g.add_argument(
        "--listen",
        default="127.0.0.1:8000",
        env="DLLMSERVE_HTTP_LISTEN",
        help="the HTTP address (HOST:PORT): this machine only by default; another address "
        "needs --insecure",
    )
    add_insecure_arg(
        g,
        "listen on a non-loopback --listen address: the gateway checks no tokens itself (it "
        "passes each caller's on; the schedulers check them when they have --auth-token)",
    )
    g.add_argument("--tls", action="store_true", help="TLS to the schedulers")
    g.add_argument("--ca", default="", help="PEM file of the schedulers' CA (implies --tls)")
    g.add_argument(
        "--max-body-bytes", type=int, default=4 * 1024 * 1024, help="largest request body"
    )
    g.add_argument(
        "--retries",
        type=int,
        default=10,
        help="retries of a call (re-attaches of a stream) while its scheduler is unavailable",
    )
    g.add_argument(
        "--rpc-timeout",
        type=_positive(float),
        default=600.0,
        help="seconds a generation may take end to end before the gateway gives up on it (504)",
    )
    g.add_argument(
        "--header-timeout",
        type=_positive(float),
        default=10.0,
        help="seconds a connection has to send its request headers before it is closed",
    )
    g.add_argument(
        "--body-timeout",
        type=_positive(float),
        default=30.0,
        help="seconds a request has to send its body before it is answered 408",
    )
    g.add_argument(
        "--max-connections",
        type=_positive(int),
        default=1000,
        help="open HTTP connections; requests over it are answered 503 (keep it below ulimit -n)",
    )
    g.add_argument(
        "--allowed-origins",
        default="",
        help="CORS: comma-separated origins whose pages may call the API ('*' = any)",
    )
    g.set_defaults(fn=cmd_gateway)
