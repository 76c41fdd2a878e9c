"""What the workers serve: the models seen lately and the limits of each model's ready workers.

Every heartbeat of a worker writes its engine's `ModelLimits` as compact JSON into its hash
(field `limits`), so the scheduler can run `resolve_request`, the very check each engine runs
on admission, before it queues a request (docs/service.md, "Model limits"). Both facts are read
from Redis at most once per `MAX_AGE_S`, so a burst of requests costs one read.
"""

from __future__ import annotations

import dataclasses
import json
import time

import grpc
import redis.asyncio as aioredis

from dllmserve.broker import redis_keys as rk
from dllmserve.engine.inputs import ModelLimits
from dllmserve.errors import echo
from dllmserve.sampling_params import SCHEDULES
from dllmserve.scheduler import errors

MAX_AGE_S = 1.0  # how stale the served models and their limits may be when a request arrives
LIMITS_FIELD = "limits"  # the worker hash's field holding its engine's ModelLimits
_TYPES = {"int": int, "bool": bool, "str": str, "None": type(None)}  # as annotated


def _allowed(annotation: object) -> set[type]:
    """The JSON value types a ModelLimits field may hold (`int | None`: an int or null)."""
    return {_TYPES[t] for t in str(annotation).split(" | ") if t in _TYPES}


def encode_limits(limits: ModelLimits) -> str:
    return json.dumps(dataclasses.asdict(limits), separators=(",", ":"))


def decode_limits(raw: str | bytes | None) -> ModelLimits | None:
    """The limits a worker registered; None when it registered none (a model-free engine) or
    ones this scheduler cannot read (another version): the worker alone checks its requests."""
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    values = {}
    for f in dataclasses.fields(ModelLimits):
        v = data.get(f.name)
        if type(v) not in _allowed(f.type):
            return None
        if type(v) is int and v < (0 if f.name.endswith("_id") else 1):  # ids from 0, counts 1
            return None
        if f.name == "default_schedule" and v not in SCHEDULES:
            return None
        values[f.name] = v
    return ModelLimits(**values)


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
        seen = await self._r.hgetall(rk.MODELS)
        known = [rk.text(m) for m, t in seen.items() if now - float(rk.text(t)) < self._memory_s]
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
            pipe.hmget(rk.worker_key(w), "model", "state", LIMITS_FIELD)
        found: dict[str, set[ModelLimits]] = {}
        for model, state, raw in await pipe.execute():
            limits = decode_limits(raw)
            if rk.text(state) == "ready" and limits is not None:
                found.setdefault(rk.text(model), set()).add(limits)
        return {m: most_generous_first(ls) for m, ls in found.items()}
