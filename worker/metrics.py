"""The worker's Prometheus metrics (its own registry, served by worker/http.py at /metrics).

Names follow vLLM's (`prefix:name`, a `model_name` label) so dashboards built for vLLM read
them with little change. Times are seconds, measured from the moment a scheduler accepted the
request (`t_enq`, stored with it in Redis), so queue time includes the dispatcher's hop.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "dllmserve:"
# Request latencies: from tens of milliseconds (tiny model) to minutes (long 8B generations).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)
# One engine iteration: from a millisecond (CUDA graph replay) to seconds (long CPU prompts).
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
PHASES = ("FULL", "SELECT", "REUSE")
FINISH_REASONS = ("stop", "length", "abort", "cancelled", "deadline", "error")


class WorkerMetrics:
    """Every metric of one worker process, children bound to its model name."""

    def __init__(self, model_name: str, snapshot: Callable[[], dict]) -> None:
        self.registry = CollectorRegistry()
        r, m = self.registry, ["model_name"]
        self.model_name = model_name

        def gauge(name: str, doc: str, key: str) -> None:
            g = Gauge(PREFIX + name, doc, m, registry=r).labels(model_name)
            g.set_function(lambda: float(snapshot().get(key, 0)))

        gauge("num_requests_running", "Requests in the engine's running batch.", "running")
        gauge("num_requests_waiting", "Requests on this worker waiting for the batch.", "waiting")
        gauge("cache_pages_capacity", "KV-cache pages of the engine's pool.", "total_pages")
        used = Gauge(PREFIX + "cache_pages_used", "KV-cache pages held by requests.", m, registry=r)
        used.labels(model_name).set_function(
            lambda: float(snapshot().get("total_pages", 0) - snapshot().get("free_pages", 0))
        )
        self.finished = Counter(
            PREFIX + "request_finished",  # exposed as ..._total
            "Requests this worker ended, by reason: stop / length (completed), abort, "
            "cancelled, deadline, error.",
            ["model_name", "finished_reason"],
            registry=r,
        )
        for reason in FINISH_REASONS:  # every series exists from the start (rate() needs it)
            self.finished.labels(model_name, reason)
        self.prompt_tokens = Counter(
            PREFIX + "prompt_tokens", "Prompt tokens of completed requests.", m, registry=r
        ).labels(model_name)
        self.generation_tokens = Counter(
            PREFIX + "generation_tokens",
            "Answer tokens (up to the first EOS/EOT) of completed requests.",
            m,
            registry=r,
        ).labels(model_name)
        self.queue_time = Histogram(
            PREFIX + "request_queue_time_seconds",
            "Accepted by a scheduler -> admitted by this worker.",
            m,
            buckets=LATENCY_BUCKETS,
            registry=r,
        ).labels(model_name)
        self.time_to_first_step = Histogram(
            PREFIX + "time_to_first_step_seconds",
            "Accepted by a scheduler -> first step update published.",
            m,
            buckets=LATENCY_BUCKETS,
            registry=r,
        ).labels(model_name)
        self.e2e_latency = Histogram(
            PREFIX + "e2e_request_latency_seconds",
            "Accepted by a scheduler -> completed (completed requests only).",
            m,
            buckets=LATENCY_BUCKETS,
            registry=r,
        ).labels(model_name)
        self.step_time = Histogram(
            PREFIX + "step_duration_seconds",
            "Wall time of one engine iteration, by its costliest phase (SELECT > FULL > REUSE).",
            ["model_name", "phase"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        for phase in PHASES:
            self.step_time.labels(model_name, phase)
        self.batch_size = Histogram(
            PREFIX + "iteration_batch_size",
            "Requests stepped together by one engine iteration.",
            m,
            buckets=BATCH_BUCKETS,
            registry=r,
        ).labels(model_name)

    def reason(self, reason: str):
        return self.finished.labels(self.model_name, reason)
