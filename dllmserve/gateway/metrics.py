"""The gateway's Prometheus metrics (counted by `access.AccessMiddleware` and the routes).

Only the API's routes are labels (anything else is "other"), so a scanner cannot blow up the
series count.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "dllmserve:"
MODEL_ROUTE = "/v1/models/{id}"
ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics", "/")
BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)


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
    if path.startswith("/v1/models/") and len(path) > len("/v1/models/"):
        return MODEL_ROUTE
    return path if path in ROUTES else "other"
