"""`dllmserve scheduler`: the gRPC front end and dispatcher."""

from __future__ import annotations

import argparse

from dllmserve.cli.common import env


def add_scheduler_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", default=env("DLLMSERVE_LISTEN", "0.0.0.0:50051"))
    p.add_argument("--max-queue", type=int, default=int(env("DLLMSERVE_MAX_QUEUE", "10000")))
    p.add_argument(
        "--max-queue-per-client",
        type=int,
        default=1000,
        help="requests one client (auth token, else IP address) may have waiting; 0: no cap",
    )
    p.add_argument("--max-attempts", type=int, default=3)
    p.add_argument("--orphan-grace", type=float, default=30.0, help="seconds")
    p.add_argument("--result-ttl", type=int, default=3600, help="seconds")
    p.add_argument("--lease-ttl-ms", type=int, default=3000)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-message-bytes", type=int, default=4 * 1024 * 1024)
    p.add_argument(
        "--max-request-bytes",
        type=int,
        default=0,
        help="a bigger request is refused before it is parsed (default: 1 MiB, at most "
        "--max-message-bytes)",
    )
    p.add_argument("--drain-grace", type=float, default=30.0, help="seconds")
    p.add_argument(
        "--cancel-wait", type=float, default=5.0, help="seconds Cancel waits for the worker"
    )
    p.add_argument(
        "--auth-token",
        default=env("DLLMSERVE_AUTH_TOKEN"),
        help="bearer token(s), comma-separated, one per tenant (env DLLMSERVE_AUTH_TOKEN)",
    )
    p.add_argument(
        "--auth-token-file",
        default=env("DLLMSERVE_AUTH_TOKEN_FILE"),
        help="a file of bearer tokens, one per line (env DLLMSERVE_AUTH_TOKEN_FILE)",
    )
    p.add_argument("--tls-cert", default=env("DLLMSERVE_TLS_CERT"))
    p.add_argument("--tls-key", default=env("DLLMSERVE_TLS_KEY"))
    p.add_argument("--id", default="", help="scheduler id (default: host-pid-random)")
    p.add_argument("--no-dispatch", action="store_true", help="relay only, never dispatch")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=int(env("DLLMSERVE_METRICS_PORT", "9090")),
        help="port of Prometheus /metrics (env DLLMSERVE_METRICS_PORT; 0: off)",
    )


def scheduler_config(a: argparse.Namespace):
    from dllmserve.scheduler.auth import load_tokens
    from dllmserve.scheduler.config import SchedulerConfig

    return SchedulerConfig(
        redis_url=a.redis_url,
        listen=a.listen,
        scheduler_id=a.id,
        max_queue=a.max_queue,
        max_queue_per_client=a.max_queue_per_client,
        max_attempts=a.max_attempts,
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
    )


def cmd_scheduler(a: argparse.Namespace) -> int:
    import asyncio

    from dllmserve.scheduler.server import run

    asyncio.run(run(scheduler_config(a)))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    sc = sub.add_parser("scheduler", help="the gRPC front end and dispatcher")
    sc.add_argument("--redis-url", default=env("DLLMSERVE_REDIS_URL") or "redis://127.0.0.1:6379/0")
    add_scheduler_args(sc)
    sc.set_defaults(fn=cmd_scheduler)
