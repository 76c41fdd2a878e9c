"""A worker's registration (`dllm:worker:{id}`, written by its heartbeat) as one typed record.

The heartbeat writes every field each beat; the scheduler reads the record whole. Its engine's
`ModelLimits` ride along as compact JSON, so the scheduler can run `resolve_request` before it
queues a request (docs/service.md, "Model limits").
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from dllmserve.broker import redis_keys as rk
from dllmserve.engine.inputs import ModelLimits
from dllmserve.sampling_params import SCHEDULES

READY, DRAINING = "ready", "draining"  # a worker's states; only a ready one gets batches


@dataclass(frozen=True)
class WorkerRecord:
    model: str = ""
    device: str = ""
    host: str = ""
    slots: int = 0  # requests it accepts at once
    state: str = ""  # READY or DRAINING; "" when the record is gone
    running: int = 0
    waiting: int = 0
    free_pages: int = 0
    total_pages: int = 0
    max_num_seqs: int = 0
    steps: int = 0
    limits: str = ""  # encode_limits(...) of its engine; "" for a model-free engine
    t: float = 0.0  # unix time of the beat

    def write(self, pipe: Any, worker_id: str, ttl_ms: int) -> None:
        """Queue the beat on a pipeline: the record, its expiry, the worker's registration."""
        key = rk.worker_key(worker_id)
        pipe.hset(
            key,
            mapping={
                k: repr(v) if isinstance(v, float) else v
                for k, v in dataclasses.asdict(self).items()
            },
        )
        pipe.pexpire(key, ttl_ms)
        pipe.sadd(rk.WORKERS, worker_id)
        pipe.hset(rk.MODELS, self.model, repr(self.t))

    @staticmethod
    def read(pipe: Any, worker_id: str) -> None:
        """Queue the read on a pipeline (or run it on a client); `parse` its reply."""
        return pipe.hgetall(rk.worker_key(worker_id))

    @classmethod
    def parse(cls, reply: dict) -> WorkerRecord:
        raw = {rk.text(k): rk.text(v) for k, v in (reply or {}).items()}
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name in raw:
                kind = {"int": int, "float": float}.get(str(f.type), str)
                values[f.name] = kind(raw[f.name]) if raw[f.name] != "" or kind is str else 0
        return cls(**values)


def set_state(client: Any, worker_id: str, state: str) -> None:
    client.hset(rk.worker_key(worker_id), "state", state)


def read_models(client: Any) -> Any:
    """`dllm:models` (model -> its last beat); `models_seen` reads the reply."""
    return client.hgetall(rk.MODELS)


def models_seen(reply: dict, now: float, memory_s: float) -> list[str]:
    """The models of a `read_models` reply that a worker served within `memory_s`."""
    return [rk.text(m) for m, t in reply.items() if now - float(rk.text(t)) < memory_s]


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
