"""The gateway's Prometheus metrics and its one log line per HTTP request.

An ASGI middleware sees every response's status and end (a stream's end included), so each
request is counted and timed once, whatever its route did. Only the API's routes are labels
(anything else is "other"), so a scanner cannot blow up the series count.
"""

from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from dllmserve.logs import event

PREFIX = "dllmserve:"
ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics", "/")
BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)
log = logging.getLogger("dllmserve.gateway.requests")


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            PREFIX + "http_requests",
            "HTTP requests answered, by route and status code.",
            ["route", "status"],
            registry=r,
        )
        self.duration = Histogram(
            PREFIX + "http_request_duration_seconds",
            "Request received -> response complete (a stream's last event), by route.",
            ["route"],
            buckets=BUCKETS,
            registry=r,
        )
        self.first_token = Histogram(
            PREFIX + "http_time_to_first_token_seconds",
            "Streamed completions: request received -> first text delta sent.",
            ["model_name"],
            buckets=BUCKETS,
            registry=r,
        )
        self.generations = Counter(
            PREFIX + "http_generations",
            "Generations (choices) completed through the HTTP API.",
            ["model_name", "finished_reason"],
            registry=r,
        )
        self.open_streams = Gauge(
            PREFIX + "http_open_streams", "Server-sent event streams open now.", registry=r
        )


def route_of(path: str) -> str:
    return path if path in ROUTES else "other"


class MetricsMiddleware:
    """Counts, times and logs every HTTP request (plain ASGI: works for streams)."""

    def __init__(self, app, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        route = route_of(scope["path"])
        status = {"code": 500}

        async def watch(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            seconds = time.perf_counter() - t0
            self.metrics.requests.labels(route, str(status["code"])).inc()
            self.metrics.duration.labels(route).observe(seconds)
            if route not in ("/metrics", "/health"):  # scrapes and probes: no log line each
                event(log, "http_request", method=scope["method"], path=scope["path"],
                      status=status["code"], ms=round(seconds * 1000, 3))  # fmt: skip
