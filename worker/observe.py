"""What the worker loop reports about requests and iterations: one log line per lifecycle
event (admitted, first_step, finished / cancelled / expired / failed) and the matching metrics.

The loop calls these hooks where the facts arise; keeping them here leaves the loop about
scheduling and publishing only. Two threads call them: the loop's (`admitted`, `step`,
`ended`) and the publisher's (`first_step`, `completed`). What both touch is the open spans,
behind the one lock of `_Spans`; the metrics are Prometheus' (thread-safe); the rest (the
phase averages, the metrics' per-request block times) only the loop's thread touches.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from dllmserve import finish_reasons, tracing
from dllmserve.broker import redis_keys as rk
from dllmserve.broker.records import read_traceparent
from dllmserve.engine.outputs import StepOutput
from dllmserve.logs import event
from dllmserve.v1 import dllm_pb2 as pb
from dllmserve.worker.metrics import WorkerMetrics

log = logging.getLogger("dllmserve.worker.requests")

_PHASE_COST = {"SELECT": 2, "FULL": 1, "REUSE": 0}
# An iteration this much slower than the recent ones of its phase (and past the floor) is
# logged: a shape's first use compiles kernels or captures a graph, and a stall must be findable.
SLOW_FACTOR, SLOW_FLOOR_S, AVERAGE_WEIGHT = 10.0, 0.25, 0.1
# A request that ended without completing: its status -> the finished_reason label.
_ENDED_REASON = {"cancelled": "cancelled", "expired": "deadline"}


def iteration_phase(updates: Sequence[StepOutput]) -> str:
    """The costliest phase the engine ran for these updates (REUSE when there are none)."""
    return max((u.phase for u in updates), key=_PHASE_COST.__getitem__, default="REUSE")


class _Spans:
    """The open `dllmserve.run` span of each request, by request id: opened and ended on the
    loop's thread, marked and ended on the publisher's, under one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, object] = {}

    def open(self, rid: str, span: object) -> None:
        with self._lock:
            self._open[rid] = span

    def get(self, rid: str) -> object | None:
        with self._lock:
            return self._open.get(rid)

    def pop(self, rid: str) -> object | None:
        with self._lock:
            return self._open.pop(rid, None)


class Observer:
    def __init__(
        self, model_name: str, snapshot: Callable[[], dict], worker_id: str, client=None
    ) -> None:
        self.metrics = WorkerMetrics(model_name, snapshot)
        self.worker_id = worker_id
        self._r = client  # reads a request's traceparent when tracing is on
        self._spans = _Spans()
        self._average_s: dict[str, float] = {}  # phase -> of its recent engine.step() calls

    def admitted(self, rid: str, attempt: int, t_enq: float, now: float) -> None:
        queued = max(0.0, now - t_enq)
        self.metrics.queue_time.observe(queued)
        self.metrics.forget(rid)  # a stale entry of an earlier attempt here
        if tracing.enabled() and self._r is not None:
            parent = rk.text(read_traceparent(self._r, rid))
            attrs = {
                "dllmserve.request_id": rid,
                "dllmserve.attempt": int(attempt),
                "dllmserve.worker": self.worker_id,
            }
            self._spans.open(rid, tracing.start("dllmserve.run", parent, **attrs))
        event(
            log,
            "admitted",
            request_id=rid,
            worker=self.worker_id,
            attempt=int(attempt),
            queued_ms=round(queued * 1000, 3),
        )

    def first_step(self, rid: str, attempt: int, t_enq: float, now: float) -> None:
        first = max(0.0, now - t_enq)
        self.metrics.time_to_first_step.observe(first)
        if (span := self._spans.get(rid)) is not None:
            span.add_event("first_step")
        event(
            log,
            "first_step",
            request_id=rid,
            worker=self.worker_id,
            attempt=int(attempt),
            first_update_ms=round(first * 1000, 3),
        )

    def step(self, engine) -> list:
        """Run one `engine.step()`, timed and labelled with its phase."""
        t0 = time.perf_counter()
        updates = engine.step()
        seconds = time.perf_counter() - t0
        self.iteration(seconds, iteration_phase(updates), [u.request_id for u in updates])
        self.metrics.denoised(updates, t0 + seconds)
        return updates

    def iteration(self, seconds: float, phase: str, request_ids: Sequence[str]) -> None:
        """One `engine.step()` call. With chained iterations a call may return the updates of
        two iterations of the same requests: each is counted. A call far slower than the recent
        ones of its phase is logged (`slow_iteration`)."""
        batch = len(set(request_ids))
        if not batch:
            return
        avg = self._average_s.get(phase)
        if avg is not None and seconds > max(SLOW_FLOOR_S, SLOW_FACTOR * avg):
            event(
                log,
                "slow_iteration",
                worker=self.worker_id,
                ms=round(seconds * 1000, 1),
                average_ms=round(avg * 1000, 1),
                phase=phase,
                requests=batch,
            )
        self._average_s[phase] = seconds if avg is None else avg + AVERAGE_WEIGHT * (seconds - avg)
        iterations = len(request_ids) // batch
        for _ in range(iterations):
            self.metrics.batch_size.observe(batch)
            self.metrics.step_time.labels(self.metrics.model_name, phase).observe(
                seconds / iterations
            )

    def completed(self, done: pb.Completed) -> None:
        reason = finish_reasons.from_pb(done.finish_reason)
        m = self.metrics
        m.reason(reason if reason in finish_reasons.TO_PB else "error").inc()
        m.prompt_tokens.inc(done.usage.prompt_tokens)
        m.generation_tokens.inc(done.usage.generated_tokens)
        m.e2e_latency.observe(done.timings.total_ms / 1000)
        m.forward_passes.observe(done.usage.forward_passes)
        tracing.end(
            self._spans.pop(done.request_id),
            **{"dllmserve.finish_reason": reason, "dllmserve.steps": done.usage.steps},
        )
        event(
            log,
            "finished",
            request_id=done.request_id,
            worker=self.worker_id,
            attempt=done.attempt,
            finish_reason=reason,
            steps=done.usage.steps,
            prompt_tokens=done.usage.prompt_tokens,
            generated_tokens=done.usage.generated_tokens,
            queued_ms=round(done.timings.queued_ms, 3),
            first_update_ms=round(done.timings.first_update_ms, 3),
            total_ms=round(done.timings.total_ms, 3),
        )

    def ended(self, rid: str, attempt: int, status: str, code: str, message: str) -> None:
        """A request ended without completing: cancelled, past its deadline, or failed."""
        self.metrics.reason(_ENDED_REASON.get(status, "error")).inc()
        self.metrics.forget(rid)
        tracing.end(self._spans.pop(rid), **{"dllmserve.code": code})
        name = status if status in _ENDED_REASON else "failed"
        level = logging.WARNING if code == "INTERNAL" else logging.INFO
        event(
            log,
            name,
            level=level,
            request_id=rid,
            worker=self.worker_id,
            attempt=int(attempt),
            code=code,
            error=message,
        )
