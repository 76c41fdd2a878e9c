"""The scheduler's Prometheus metrics, served on `--metrics-port` (default 9090, 0 = off).

Two kinds: counters of what this scheduler did (requests accepted, refused, redelivered and
dead-lettered by its dispatcher), updated where that happens, and the service's state read
from Redis at scrape time (queue length, workers by state, heartbeat ages, free slots,
leadership), so a scrape is never stale and no timer polls Redis between scrapes. Request
latencies and engine timings are the workers' (worker/metrics.py): they see them first-hand.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import grpc
import redis
from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from dllmserve.broker import redis_keys as rk
from dllmserve.broker.redis_link import connect
from dllmserve.broker.workers import READY, WorkerRecord
from dllmserve.errors import ListenError
from dllmserve.logs import event
from dllmserve.scheduler.config import SchedulerConfig
from dllmserve.scheduler.dispatcher import Dispatcher

PREFIX = "dllmserve:"
log = logging.getLogger("dllmserve.scheduler.requests")


class SchedulerMetrics:
    def __init__(
        self, cfg: SchedulerConfig, dispatcher: Dispatcher, open_streams: Callable[[], int]
    ) -> None:
        self.registry = CollectorRegistry()
        self.accepted = Counter(
            PREFIX + "requests_accepted",
            "Generate calls this scheduler queued (a duplicate request_id is not counted).",
            ["model_name"],
            registry=self.registry,
        )
        self.refused = Counter(
            PREFIX + "requests_refused",
            "Generate calls this scheduler ended with an error status before or while "
            "streaming, by gRPC status code (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, ...).",
            ["code"],
            registry=self.registry,
        )
        self.registry.register(_StateCollector(cfg, dispatcher, open_streams))

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        """Serve /metrics on a thread; an error naming the flag when the port is taken."""
        try:
            start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            raise ListenError(f"--metrics-port {port}: cannot listen ({e.strerror or e})") from None

    def on_accepted(self, rid: str, model: str, position: int, priority: int) -> None:
        self.accepted.labels(model).inc()
        event(
            log, "accepted", request_id=rid, model=model, queue_position=position, priority=priority
        )

    def on_refused(self, rid: str, code: grpc.StatusCode, message: str, rpc: str = "") -> None:
        """Every call that ends with an error status (a bad field, a full queue, Redis down, a
        cancelled or failed request...): one line with the request id and the cause, no
        traceback."""
        self.refused.labels(code.name).inc()
        level = logging.WARNING if code in _SERVER_SIDE else logging.INFO
        event(
            log,
            "refused",
            level=level,
            request_id=rid or None,
            rpc=rpc or None,
            code=code.name,
            error=message,
        )


# errors of the service rather than of the request: worth an operator's attention
_SERVER_SIDE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.ABORTED}
)


class _StateCollector(Collector):
    """Reads the service's state from Redis at every scrape (a few pipelined reads)."""

    def __init__(
        self, cfg: SchedulerConfig, dispatcher: Dispatcher, open_streams: Callable[[], int]
    ) -> None:
        self._r = connect(cfg.redis_url, socket_timeout=2, socket_connect_timeout=2)
        self._cfg = cfg
        self._dispatcher = dispatcher
        self._open_streams = open_streams

    def collect(self):
        st = self._dispatcher.state
        yield _gauge(
            "dispatcher_leader",
            "1 while this scheduler holds the dispatcher lease.",
            1.0 if st.leader else 0.0,
        )
        yield _gauge(
            "open_streams", "Generate/Attach streams open on this scheduler.", self._open_streams()
        )
        yield _gauge(
            "max_queue", "Queued requests beyond which Generate is refused.", self._cfg.max_queue
        )
        for name, doc, value in (
            (
                "requests_dispatched",
                "Requests this scheduler's dispatcher handed to workers.",
                st.dispatched,
            ),
            (
                "requests_redelivered",
                "Requests queued again after their worker died.",
                st.reclaimed,
            ),
            (
                "requests_dead_lettered",
                "Requests moved to dllm:dead after max_attempts.",
                st.dead_lettered,
            ),
        ):
            c = CounterMetricFamily(PREFIX + name, doc)
            c.add_metric([], value)
            yield c
        try:
            yield from self._from_redis()
            up = 1.0
        except redis.exceptions.RedisError:
            up = 0.0
        yield _gauge("redis_up", "1 when the last scrape could read Redis.", up)

    def _from_redis(self):
        queue = self._r.xlen(rk.PENDING)
        ids = sorted(rk.text(w) for w in self._r.smembers(rk.WORKERS))
        pipe = self._r.pipeline(transaction=False)
        for w in ids:
            WorkerRecord.read(pipe, w)
            pipe.get(rk.load_key(w))
        replies = pipe.execute()
        now = time.time()
        yield _gauge("queue_length", "Requests waiting in dllm:pending (all models).", queue)
        workers = GaugeMetricFamily(
            PREFIX + "workers", "Live workers by state.", labels=["model_name", "state"]
        )
        age = GaugeMetricFamily(
            PREFIX + "worker_heartbeat_age_seconds",
            "Seconds since each live worker's last heartbeat.",
            labels=["model_name", "worker_id"],
        )
        free = GaugeMetricFamily(
            PREFIX + "free_slots", "Requests ready workers would accept now.", labels=["model_name"]
        )
        counts: dict[tuple[str, str], int] = {}
        slots: dict[str, int] = {}
        for i, w in enumerate(ids):
            rec, load = WorkerRecord.parse(replies[2 * i]), replies[2 * i + 1]
            if not rec.state:  # heartbeat expired: about to be reaped
                continue
            model, state = rec.model, rec.state
            counts[(model, state)] = counts.get((model, state), 0) + 1
            age.add_metric([model, w], max(0.0, now - (rec.t or now)))
            if state == READY:
                left = rec.slots - int(rk.text(load) or 0)
                slots[model] = slots.get(model, 0) + max(0, left)
        for (model, state), n in sorted(counts.items()):
            workers.add_metric([model, state], n)
        for model, n in sorted(slots.items()):
            free.add_metric([model], n)
        yield from (workers, age, free)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, value=value)
