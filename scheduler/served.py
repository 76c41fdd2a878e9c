"""What the workers serve: the models seen lately and the limits of each model's ready workers.

Every heartbeat of a worker writes its engine's `ModelLimits` as compact JSON into its hash
(field `limits`), so the scheduler can run `resolve_request`, the very check each engine runs
on admission, before it queues a request (docs/service.md, "Model limits"). Both facts are read
from Redis at most once per `MAX_AGE_S`, so a burst of requests costs one read.
"""

from __future__ import annotations

import time

import grpc
import redis.asyncio as aioredis

from dllmserve.broker import redis_keys as rk
from dllmserve.broker.workers import (
    READY,
    WorkerRecord,
    decode_limits,
    models_seen,
    read_models,
)
from dllmserve.engine.inputs import ModelLimits
from dllmserve.errors import echo
from dllmserve.scheduler import errors

MAX_AGE_S = 1.0  # how stale the served models and their limits may be when a request arrives


def most_generous_first(limits: set[ModelLimits]) -> list[ModelLimits]:
    """Distinct limits ordered by the cache they hold, then their token budget and length: a
    request none of them fits gets the error of the first, the one that names the most room."""
    return sorted(
        limits,
        key=lambda m: (m.num_cache_pages * m.page_size, m.max_num_batched_tokens, m.max_len),
        reverse=True,
    )


class ServedModels:
    """The models and limits this scheduler last read from the workers' registrations."""

    def __init__(self, client: aioredis.Redis, model_memory_s: float) -> None:
        self._r = client
        self._memory_s = model_memory_s
        self._models: tuple[float, list[str]] = (-1e9, [])  # (monotonic time read, names)
        self._limits: tuple[float, dict[str, list[ModelLimits]]] = (-1e9, {})

    async def known(self, max_age_s: float = 0.0) -> list[str]:
        """The models served lately; a list read at most `max_age_s` ago may be reused."""
        read_at, known = self._models
        if time.monotonic() - read_at <= max_age_s:
            return known
        now = time.time()
        known = models_seen(await read_models(self._r), now, self._memory_s)
        self._models = (time.monotonic(), known)
        return known

    async def resolve(self, name: str) -> str:
        """The model a request asks for (empty: the only one served); NOT_FOUND when unknown."""
        # A burst of requests reads the models once; a name not seen yet is looked up afresh.
        known = await self.known(max_age_s=MAX_AGE_S)
        if name and name not in known:
            known = await self.known()
        if name:
            if name not in known:
                raise errors.simple(
                    grpc.StatusCode.NOT_FOUND,
                    f"model {echo(name)} is not served here; served models: {sorted(known)}",
                )
            return name
        if len(known) > 1:
            raise errors.invalid_argument(
                "model", f"required: several models are served ({sorted(known)})"
            )
        return known[0] if known else ""

    async def limits_of(self, model: str) -> list[ModelLimits]:
        """The distinct limits of the model's `ready` workers, most generous first; empty when
        none has registered readable ones."""
        read_at, by_model = self._limits
        if time.monotonic() - read_at > MAX_AGE_S:
            by_model = await self._read_limits()
            self._limits = (time.monotonic(), by_model)
        return by_model.get(model, [])

    async def _read_limits(self) -> dict[str, list[ModelLimits]]:
        ids = [rk.text(w) for w in await self._r.smembers(rk.WORKERS)]
        if not ids:
            return {}
        pipe = self._r.pipeline(transaction=False)
        for w in ids:
            WorkerRecord.read(pipe, w)
        found: dict[str, set[ModelLimits]] = {}
        for reply in await pipe.execute():
            rec = WorkerRecord.parse(reply)
            limits = decode_limits(rec.limits)
            if rec.state == READY and limits is not None:
                found.setdefault(rec.model, set()).add(limits)
        return {m: most_generous_first(ls) for m, ls in found.items()}
