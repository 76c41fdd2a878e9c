"""The Admission: a request as the scheduler validated it, carried to the worker as it is.

The scheduler builds the prompt, `SamplingParams` and `SparseConfig` once (their checks run
then) and stores them in the request hash as named JSON with every field written out, its
defaults resolved. The worker reads that record back into the same objects without converting
the wire message or running the field checks again: what it gets is what the scheduler
checked. The checks that need the model still run once, in the engine's `resolve_request`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

from dllmserve.engine.protocol import Prompt
from dllmserve.sampling_params import SamplingParams
from dllmserve.sparse.state import SparseConfig
from dllmserve.structured.spec import StructuredOutput


@dataclass(frozen=True)
class Admission:
    """A request as the engine's add_request takes it (the scheduler's checks passed)."""

    prompt: Prompt
    sampling_params: SamplingParams
    sparse_config: SparseConfig | None

    def encode(self) -> bytes:
        """The stored form: deterministic, so ENQUEUE's dedupe can compare it byte for byte."""
        sp = _named(self.sampling_params)
        if self.sampling_params.structured_output is not None:
            sp["structured_output"] = _named(self.sampling_params.structured_output)
        sc = _named(self.sparse_config) if self.sparse_config is not None else None
        doc = {"prompt": self.prompt, "sampling_params": sp, "sparse_config": sc}
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def decode(cls, data: bytes) -> Admission:
        """The scheduler's Admission back, field for field; nothing is checked again."""
        doc = json.loads(data)
        sp = dict(doc["sampling_params"])
        if sp["structured_output"] is not None:
            sp["structured_output"] = _carried(StructuredOutput, sp["structured_output"])
        sc = doc["sparse_config"]
        return cls(
            prompt=doc["prompt"],
            sampling_params=_carried(SamplingParams, sp),
            sparse_config=_carried(SparseConfig, sc) if sc is not None else None,
        )


def _named(value: Any) -> dict[str, Any]:
    """Every field of a dataclass by name (tuples become JSON lists)."""
    return {f.name: getattr(value, f.name) for f in fields(value)}


def _carried(cls: type, values: dict[str, Any]) -> Any:
    """An instance of the frozen dataclass `cls` holding exactly `values`, without its
    `__post_init__`: its checks passed in the scheduler, and its normal forms (canonical schema
    text, tuples of floats) are what was stored. JSON lists come back as the tuples they were."""
    obj = object.__new__(cls)
    for f in fields(cls):
        value = values[f.name]
        object.__setattr__(obj, f.name, tuple(value) if isinstance(value, list) else value)
    return obj
