"""Structured outputs' compiles, off the worker's step loop (docs/structured_outputs.md).

Compiling a constraint against the model's vocabulary can take seconds (bounded by the
compiler's time limit). A request with a `structured_output` therefore waits here, taken but not
yet in the engine, while one thread compiles it (the regex's DFA is built in a child process, so
the thread mostly waits and the loop keeps stepping the other requests); once compiled, the
loop hands it to the engine at its next pass (within `idle_block_ms` when nothing else runs),
whose own compile is then a cache hit (one compile thread, and the loop takes every finished
compile each pass: 64 newer compiles would have to end within one step for the cache to drop
it, and then the engine would compile it again, bounded). The requests waiting are
bounded by the worker's slots (the dispatcher gives a worker no more), and a compile that fails
ends its request with the compiler's error (INVALID_ARGUMENT naming the field).

`DLLMSERVE_FAULT_COMPILE_GATE=PATH` (fault injection, for the tests): every compile first waits
until the file PATH exists, like a compile that takes as long as the test wants.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from dllmserve.engine.protocol import StepEngine
from dllmserve.sampling_params import SamplingParams

GATE_ENV = "DLLMSERVE_FAULT_COMPILE_GATE"


class Compiles:
    """The requests whose constraint is compiling, by request id."""

    def __init__(self, engine: StepEngine, gate: str = os.environ.get(GATE_ENV, "")) -> None:
        self.engine = engine
        self.gate = Path(gate) if gate else None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="structured-compile")
        self._waiting: dict[str, tuple[Future, dict]] = {}

    def wanted(self, params: SamplingParams) -> bool:
        """Whether the request must compile first: a constraint, on an engine with a tokenizer
        (one without refuses it on admission, at once)."""
        has_vocab = getattr(self.engine, "tokenizer", None) is not None
        return params.structured_output is not None and has_vocab

    def submit(self, rid: str, params: SamplingParams, admission: dict) -> None:
        """Compile `params`' constraint; `admission` comes back from `ready` with the result."""
        self._waiting[rid] = (self._pool.submit(self._compile, params), admission)

    def drop(self, rid: str) -> None:
        """Forget a request (cancelled, expired, ended); its compile still fills the cache."""
        self._waiting.pop(rid, None)

    def __len__(self) -> int:
        return len(self._waiting)

    def ready(self) -> list[tuple[str, dict, BaseException | None]]:
        """The requests whose compile ended: (id, admission, its error or None)."""
        done = [(rid, f, adm) for rid, (f, adm) in self._waiting.items() if f.done()]
        for rid, _f, _adm in done:
            del self._waiting[rid]
        return [(rid, adm, f.exception()) for rid, f, adm in done]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _compile(self, params: SamplingParams) -> None:
        """Compile into the cache (the thread): the engine's admission then finds it there."""
        while self.gate is not None and not self.gate.exists():
            time.sleep(0.05)
        from dllmserve.engine.constrained import request_constraint

        e = self.engine
        request_constraint(params, e.tokenizer, e.tokens.stop, e.limits.vocab_size)
