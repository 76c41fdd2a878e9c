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
    p.add_argument(
        "--listen",
        default="127.0.0.1:50051",
        help="the gRPC address (HOST:PORT): this machine only by default; another address needs "
        "--auth-token or --insecure",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=10000,
        help="requests waiting at most; beyond, RESOURCE_EXHAUSTED with a retry hint",
    )
    p.add_argument(
        "--max-queue-per-client",
        type=int,
        default=1000,
        help="requests one client (auth token, else IP address) may have waiting; 0: no cap",
    )
    p.add_argument(
        "--max-attempts",
        type=int,
        default=3,
        help="workers a request may crash or stall while running alone before it is "
        "dead-lettered (ABORTED)",
    )
    p.add_argument(
        "--trust-client-header",
        action="store_true",
        help="count queued requests per x-dllmserve-client (the user a gateway calls for) "
        "from any caller; with auth on it is honoured from authenticated callers anyway",
    )
    p.add_argument(
        "--worker-wait",
        type=float,
        default=10.0,
        help="seconds a request waits for a ready worker of its model before it fails "
        "(UNAVAILABLE)",
    )
    p.add_argument(
        "--orphan-grace",
        type=float,
        default=30.0,
        help="seconds a request keeps running with no client attached",
    )
    p.add_argument(
        "--result-ttl",
        type=int,
        default=3600,
        help="seconds a finished request can still be attached to",
    )
    p.add_argument(
        "--lease-ttl-ms",
        type=int,
        default=3000,
        help="the dispatcher lease: a dead dispatcher is replaced after this long",
    )
    p.add_argument(
        "--max-batch", type=int, default=32, help="requests per batch handed to a worker"
    )
    p.add_argument(
        "--max-message-bytes",
        type=int,
        default=4 * 1024 * 1024,
        help="largest gRPC message accepted",
    )
    p.add_argument(
        "--max-request-bytes",
        type=int,
        default=0,
        help="a bigger request is refused before it is parsed (0: 1 MiB, at most "
        "--max-message-bytes)",
    )
    p.add_argument(
        "--drain-grace",
        type=float,
        default=30.0,
        help="seconds open streams get to finish after SIGTERM",
    )
    p.add_argument(
        "--cancel-wait", type=float, default=5.0, help="seconds Cancel waits for the worker"
    )
    p.add_argument(
        "--auth-token",
        default="",
        help="bearer token(s) clients must send, comma-separated, one per tenant "
        "(none: no authentication)",
    )
    p.add_argument("--auth-token-file", default="", help="a file of bearer tokens, one per line")
    p.add_argument("--tls-cert", default="", help="PEM certificate: serve gRPC over TLS")
    p.add_argument("--tls-key", default="", help="PEM private key of --tls-cert")
    p.add_argument("--id", default="", help="scheduler id (none: host-pid-random)")
    p.add_argument("--no-dispatch", action="store_true", help="relay only, never dispatch")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=9090,
        help="port of Prometheus /metrics (0: off)",
    )
    p.add_argument(
        "--metrics-host",
        default="0.0.0.0",
        help="address /metrics listens on (dllmserve serve: 127.0.0.1)",
    )


def scheduler_config(a: argparse.Namespace):
    from dllmserve.scheduler.auth import load_tokens
    from dllmserve.scheduler.config import SchedulerConfig

    return SchedulerConfig(
        redis_url=checked_redis_url(a.redis_url),
        listen=a.listen,
        scheduler_id=a.id,
        max_queue=a.max_queue,
        max_queue_per_client=a.max_queue_per_client,
        max_attempts=a.max_attempts,
        worker_wait_s=a.worker_wait,
        trust_client_header=a.trust_client_header,
        orphan_grace_s=a.orphan_grace,
        result_ttl_s=a.result_ttl,
        lease_ttl_ms=a.lease_ttl_ms,
        max_batch=a.max_batch,
        max_message_bytes=a.max_message_bytes,
        max_request_bytes=a.max_request_bytes,
        drain_grace_s=a.drain_grace,
        cancel_wait_s=a.cancel_wait,
        auth_tokens=load_tokens(a.auth_token, a.auth_token_file),
        tls_cert=a.tls_cert,
        tls_key=a.tls_key,
        dispatch=not a.no_dispatch,
        metrics_port=a.metrics_port,
        metrics_host=a.metrics_host,
    )


def checked_redis_url(url: str) -> str:
    """The --redis-url, required and well formed (a mistake is one line, not a traceback)."""
    from dllmserve.scheduler.redis_link import check_url

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
