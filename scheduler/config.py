"""Scheduler settings (command-line flags and environment variables map onto these)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dllmserve.scheduler.validation import Limits


@dataclass
class SchedulerConfig:
    redis_url: str = "redis://127.0.0.1:6379/0"
    listen: str = "0.0.0.0:50051"
    scheduler_id: str = ""  # empty: host-pid-random
    max_queue: int = 10_000  # pending requests before RESOURCE_EXHAUSTED
    # pending requests of one client (tenant token, else IP address) before RESOURCE_EXHAUSTED;
    # 0: no cap
    max_queue_per_client: int = 1000
    # honour x-dllmserve-client (the user a front end calls for) from any caller, auth off too
    trust_client_header: bool = False
    retry_after_s: float = 1.0  # the RetryInfo hint sent with RESOURCE_EXHAUSTED
    max_attempts: int = 3  # workers a request may crash running alone before it is dead-lettered
    # a request waits this long for a ready worker of its model, then fails UNAVAILABLE
    worker_wait_s: float = 10.0
    result_ttl_s: int = 3600  # how long a finished request can still be attached to
    orphan_grace_s: float = 30.0  # a request without any client is cancelled after this
    model_memory_s: float = 3600.0  # a model is "known" this long after a worker served it
    lease_ttl_ms: int = 3000
    max_batch: int = 32
    max_message_bytes: int = 4 * 1024 * 1024  # the transport's limit (a response's too)
    # the receive limit: a bigger request is refused (RESOURCE_EXHAUSTED) before it is parsed,
    # so one request costs the scheduler and Redis at most this much; 0: min(1 MiB, the above)
    max_request_bytes: int = 0
    drain_grace_s: float = 30.0
    cancel_wait_s: float = 5.0  # how long Cancel waits for a worker to confirm
    # non-empty: every RPC but health needs "authorization: Bearer <one of them>" (a tenant)
    auth_tokens: tuple[str, ...] = ()
    tls_cert: str = ""  # PEM files; both set: serve TLS
    tls_key: str = ""
    dispatch: bool = True  # take part in the dispatcher election
    metrics_port: int = 9090  # Prometheus /metrics (scheduler/metrics.py); 0: off
    metrics_host: str = "0.0.0.0"  # the address /metrics listens on (serve: 127.0.0.1)
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        lo, hi = 1024, self.max_message_bytes
        self.max_request_bytes = self.max_request_bytes or min(1 << 20, hi)
        if not lo <= self.max_request_bytes <= hi:
            raise ValueError(
                f"max_request_bytes must be in [{lo}, max_message_bytes={hi}], "
                f"got {self.max_request_bytes}"
            )
