"""`dllmserve scheduler`: the gRPC front end and dispatcher."""

from __future__ import annotations

import argparse

from dllmserve.cli.common import (
    OperatorError,
    add_insecure_arg,
    add_redis_arg,
    check_listen,
    redacted,
    require_redis_url,
)
from dllmserve.cli.config_args import add_config_args, config_from_args

DESCRIPTION = """\
The gRPC front end: validates requests, queues them in Redis, relays every denoising step to
its client. One scheduler at a time (a Redis lease) also dispatches batches to the workers, so
any number can run behind one address; a SIGTERM drains it."""

EXAMPLES = """\
examples:
  dllmserve scheduler --redis-url redis://:PASSWORD@redis:6379/0    # on 127.0.0.1:50051
  DLLMSERVE_AUTH_TOKEN=s3cret dllmserve scheduler --listen 0.0.0.0:50051
  DLLMSERVE_AUTH_TOKEN=s3cret dllmserve scheduler --tls-cert cert.pem --tls-key key.pem
  dllmserve scheduler --no-dispatch          # a relay-only replica"""


def add_scheduler_args(p: argparse.ArgumentParser) -> None:
    """SchedulerConfig's flags (generated), and the token flags that fill its auth_tokens."""
    from dllmserve.scheduler.config import SchedulerConfig

    add_config_args(p, SchedulerConfig)
    p.add_argument(
        "--auth-token",
        default="",
        help="bearer token(s) clients must send, comma-separated, one per tenant "
        "(none: no authentication)",
    )
    p.add_argument("--auth-token-file", default="", help="a file of bearer tokens, one per line")


def scheduler_config(a: argparse.Namespace):
    from dllmserve.scheduler.auth import load_tokens
    from dllmserve.scheduler.config import SchedulerConfig

    return config_from_args(
        SchedulerConfig,
        a,
        redis_url=checked_redis_url(a.redis_url),
        auth_tokens=load_tokens(a.auth_token, a.auth_token_file),
    )


def checked_redis_url(url: str) -> str:
    """The --redis-url, required and well formed (a mistake is one line, not a traceback)."""
    from dllmserve.broker.redis_link import check_url

    url = require_redis_url(url)
    try:
        check_url(url)
    except ValueError as e:
        raise OperatorError(f"--redis-url {redacted(url)}: {e}") from None
    return url


def cmd_scheduler(a: argparse.Namespace) -> int:
    import asyncio

    from dllmserve.scheduler.server import run

    cfg = scheduler_config(a)
    if not cfg.auth_tokens:
        check_listen(a.listen, a.insecure, "no --auth-token: anyone who reaches it may use it")
    asyncio.run(run(cfg))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    sc = sub.add_parser(
        "scheduler",
        help="the gRPC front end and dispatcher",
        description=DESCRIPTION,
        epilog=EXAMPLES,
    )
    add_redis_arg(sc)
    add_scheduler_args(sc)
    add_insecure_arg(
        sc,
        "listen on a non-loopback --listen address without --auth-token (inside a container "
        "or a private network that only trusted clients reach)",
    )
    sc.set_defaults(fn=cmd_scheduler)
