"""The worker's Prometheus metrics (its own registry, served by worker/http.py at /metrics).

Names follow vLLM's (`prefix:name`, a `model_name` label) so dashboards built for vLLM read
them with little change. Times are seconds, measured from the moment a scheduler accepted the
request (`t_enq`, stored with it in Redis), so queue time includes the dispatcher's hop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from dllmserve import finish_reasons
from dllmserve.engine.outputs import StepOutput

PREFIX = "dllmserve:"
# Request latencies: from tens of milliseconds (tiny model) to minutes (long 8B generations).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)
# One engine iteration: from a millisecond (CUDA graph replay) to seconds (long CPU prompts).
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# Tokens a request's step commits per forward: from none (a step of Dream's `origin` may commit
# nothing; cfg halves a step's count) to a whole block at once (threshold decoding).
PER_FORWARD_BUCKETS = (0, 0.5, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256)
# Model forwards of one request: from a single step to 8192 steps with cfg (two per step).
FORWARD_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
# A position's time from its first provisional token to its commit: none (committed by the
# block's first step) to a long block of slow steps.
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20,
                  40, 80, 160, 320)  # fmt: skip
PHASES = ("FULL", "SELECT", "REUSE")
# Completed (the engine's reasons), then ended otherwise (the loop's).
FINISH_REASONS = (*finish_reasons.TO_PB, "cancelled", "deadline", "error")


class WorkerMetrics:
    """Every metric of one worker process, children bound to its model name."""

    def __init__(self, model_name: str, snapshot: Callable[[], dict]) -> None:
        self.registry = CollectorRegistry()
        r, m = self.registry, ["model_name"]
        self.model_name = model_name

        self._gauges(snapshot)
        self.finished = Counter(
            PREFIX + "request_finished",  # exposed as ..._total
            "Requests this worker ended, by reason: stop / length (completed), cancelled, "
            "deadline, error.",
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

        self._denoise_metrics(m)
        # request id -> (its current block, when that block's first step ended)
        self._block_seen: dict[str, tuple[int, float]] = {}

    def _gauges(self, snapshot: Callable[[], dict]) -> None:
        """The engine's state, read from its last snapshot at each scrape."""
        r, m, model_name = self.registry, ["model_name"], self.model_name

        def gauge(name: str, doc: str, key: str) -> None:
            g = Gauge(PREFIX + name, doc, m, registry=r).labels(model_name)
            g.set_function(lambda: float(snapshot().get(key, 0)))

        gauge("num_requests_running", "Requests in the engine's running batch.", "running")
        gauge("num_requests_waiting", "Requests on this worker waiting for the batch.", "waiting")
        gauge("cache_pages_capacity", "KV-cache pages of the engine's pool.", "total_pages")
        gauge(
            "prefix_cache_hit_rate",
            "Block-diffusion models: prompt blocks found in the "
            "prefix cache over those looked up (0 without one).",
            "prefix_cache_hit_rate",
        )
        gauge(
            "prefix_cache_pages",
            "Block-diffusion models: KV-cache pages of cached prompt "
            "blocks (0 without a prefix cache).",
            "prefix_cached_pages",
        )
        used = Gauge(PREFIX + "cache_pages_used", "KV-cache pages held by requests.", m, registry=r)
        used.labels(model_name).set_function(
            lambda: float(snapshot().get("total_pages", 0) - snapshot().get("free_pages", 0))
        )

    def _denoise_metrics(self, m: list[str]) -> None:
        """The dLLM-native histograms: what parallel decoding buys, per step and per request."""
        r, name = self.registry, self.model_name
        self.tokens_per_forward = Histogram(
            PREFIX + "tokens_committed_per_forward",
            "Tokens one denoising step of a request committed, per model forward it ran (two "
            "with cfg_scale); the EOS fill of an early stop is not counted.",
            m,
            buckets=PER_FORWARD_BUCKETS,
            registry=r,
        ).labels(name)
        self.forward_passes = Histogram(
            PREFIX + "request_forward_passes",
            "Model forwards a completed request ran (its steps, twice with cfg_scale).",
            m,
            buckets=FORWARD_BUCKETS,
            registry=r,
        ).labels(name)
        self.commit_time = Histogram(
            PREFIX + "position_time_to_commit_seconds",
            "A generated position's first provisional appearance (the end of the first step of "
            "its block) -> the end of the step that committed it.",
            m,
            buckets=COMMIT_BUCKETS,
            registry=r,
        ).labels(name)

    def reason(self, reason: str):
        return self.finished.labels(self.model_name, reason)

    def denoised(self, updates: Sequence[StepOutput], now: float) -> None:
        """Observe the steps one engine iteration returned, `now` (a monotonic time) being when
        it returned them: tokens per forward, and each committed position's time to commit."""
        for u in updates:
            block, appeared = self._block_seen.get(u.request_id, (-1, now))
            if block != u.block_index:  # the block's first step: its positions appear now
                appeared = now
            start = u.block_index * u.block_length
            committed = sum(1 for p in u.positions if start <= p < start + u.block_length)
            self.tokens_per_forward.observe(committed / u.forward_passes)
            for _ in range(committed):
                self.commit_time.observe(now - appeared)
            if u.finished:
                self._block_seen.pop(u.request_id, None)
            else:
                self._block_seen[u.request_id] = (u.block_index, appeared)

    def forget(self, request_id: str) -> None:
        """A request ended without finishing (cancelled, expired, failed)."""
        self._block_seen.pop(request_id, None)
