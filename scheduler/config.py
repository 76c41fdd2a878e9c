"""Scheduler settings. Each field carries its flag's help (and its flag and range where they
differ from the field's name or from any value): `dllmserve scheduler`'s flags and their
environment variables are generated from these fields (dllmserve/cli/config_args.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dllmserve.broker.redis_keys import RESULT_TTL_S
from dllmserve.config_fields import setting


@dataclass(frozen=True)
class Limits:
    """Wire-level limits, whatever the model (the model's own come from its workers)."""

    max_prompt_chars: int = 200_000
    max_prompt_tokens: int = 32_768
    max_gen_length: int = 8192
    max_messages: int = 256


@dataclass
class SchedulerConfig:
    redis_url: str = setting("", "", cli=False)  # required: the CLI's --redis-url
    listen: str = setting(
        "127.0.0.1:50051",
        "the gRPC address (HOST:PORT): this machine only by default; another address needs "
        "--auth-token or --insecure",
    )
    scheduler_id: str = setting("", "scheduler id (none: host-pid-random)", flag="--id")
    max_queue: int = setting(
        10_000, "requests waiting at most; beyond, RESOURCE_EXHAUSTED with a retry hint", lo=1
    )
    max_queue_per_client: int = setting(
        1000, "requests one client (auth token, else IP address) may have waiting; 0: no cap", lo=0
    )
    trust_client_header: bool = setting(
        False,
        "count queued requests per x-dllmserve-client (the user a gateway calls for) from any "
        "caller; with auth on it is honoured from authenticated callers anyway",
    )
    retry_after_s: float = setting(
        1.0, "the RetryInfo hint sent with RESOURCE_EXHAUSTED", cli=False
    )
    max_attempts: int = setting(
        3,
        "workers a request may crash or stall while running alone before it is dead-lettered "
        "(ABORTED)",
        lo=1,
    )
    worker_wait_s: float = setting(
        10.0,
        "seconds a request waits for a ready worker of its model before it fails (UNAVAILABLE)",
        flag="--worker-wait",
        lo=0,
    )
    result_ttl_s: int = setting(
        RESULT_TTL_S,
        "seconds a finished request can still be attached to (stored with each request: it "
        "governs every record of it, the workers' included)",
        flag="--result-ttl",
        lo=1,
    )
    orphan_grace_s: float = setting(
        30.0,
        "seconds a request keeps running with no client attached",
        flag="--orphan-grace",
        lo=0,
    )
    model_memory_s: float = setting(
        3600.0, "a model is known this long after a worker served it", cli=False
    )
    lease_ttl_ms: int = setting(
        3000, "the dispatcher lease: a dead dispatcher is replaced after this long", lo=100
    )
    max_batch: int = setting(32, "requests per batch handed to a worker", lo=1)
    max_message_bytes: int = setting(4 * 1024 * 1024, "largest gRPC message accepted", lo=1024)
    max_request_bytes: int = setting(
        0,
        "a bigger request is refused before it is parsed (0: 1 MiB, at most --max-message-bytes)",
        lo=0,
    )
    drain_grace_s: float = setting(
        30.0, "seconds open streams get to finish after SIGTERM", flag="--drain-grace", lo=0
    )
    cancel_wait_s: float = setting(
        5.0, "seconds Cancel waits for the worker", flag="--cancel-wait", lo=0
    )
    # non-empty: every RPC but health needs "authorization: Bearer <one of them>" (a tenant);
    # from --auth-token / --auth-token-file (cli/scheduler.py)
    auth_tokens: tuple[str, ...] = field(default=(), metadata={"cli": False})
    tls_cert: str = setting("", "PEM certificate: serve gRPC over TLS")
    tls_key: str = setting("", "PEM private key of --tls-cert")
    dispatch: bool = setting(
        True, "relay only, never dispatch", flag="--no-dispatch"
    )  # a flag that turns a default-on field off
    metrics_port: int = setting(9090, "port of Prometheus /metrics (0: off)", lo=0, hi=65535)
    metrics_host: str = setting(
        "0.0.0.0", "address /metrics listens on (dllmserve serve: 127.0.0.1)"
    )
    limits: Limits = field(default_factory=Limits, metadata={"cli": False})
    # the dispatcher's pace (not flags: the defaults suit every deployment seen so far)
    reap_interval_s: float = setting(0.5, "how often dead workers are looked for", cli=False)
    sweep_interval_s: float = setting(
        5.0, "how often dllm:assigned is swept for vanished workers", cli=False
    )
    read_block_ms: int = setting(100, "the dispatcher's blocking read of dllm:pending", cli=False)

    def __post_init__(self) -> None:
        lo, hi = 1024, self.max_message_bytes
        self.max_request_bytes = self.max_request_bytes or min(1 << 20, hi)
        if not lo <= self.max_request_bytes <= hi:
            raise ValueError(
                f"max_request_bytes must be in [{lo}, max_message_bytes={hi}], "
                f"got {self.max_request_bytes}"
            )
