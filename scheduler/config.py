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
    retry_after_s: float = 1.0  # the RetryInfo hint sent with RESOURCE_EXHAUSTED
    max_attempts: int = 3  # workers a request may kill before it is dead-lettered
    result_ttl_s: int = 3600  # how long a finished request can still be attached to
    orphan_grace_s: float = 30.0  # a request without any client is cancelled after this
    model_memory_s: float = 3600.0  # a model is "known" this long after a worker served it
    lease_ttl_ms: int = 3000
    max_batch: int = 32
    max_message_bytes: int = 4 * 1024 * 1024
    drain_grace_s: float = 30.0
    auth_token: str = ""  # non-empty: every RPC but health needs "authorization: Bearer <token>"
    tls_cert: str = ""  # PEM files; both set: serve TLS
    tls_key: str = ""
    dispatch: bool = True  # take part in the dispatcher election
    metrics_port: int = 9090  # Prometheus /metrics (scheduler/metrics.py); 0: off
    limits: Limits = field(default_factory=Limits)
