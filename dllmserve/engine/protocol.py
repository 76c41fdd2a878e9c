"""The engine surface the worker drives (`dllmserve.worker.loop`), as a typed protocol.

`dllmserve.engine.engine.Engine` implements it, and so does the model-free
`dllmserve.testing.fake_engine.FakeEngine` of the service tests and the relay benchmark.
Torch-free, like everything the worker loop imports.
"""

from __future__ import annotations

from typing import Protocol

from dllmserve.engine.inputs import ModelLimits
from dllmserve.engine.outputs import StepOutput
from dllmserve.sampling_params import SamplingParams
from dllmserve.sparse.state import SparseConfig

Prompt = str | list[int] | list[dict[str, str]]  # text, token ids, or chat messages


class StepEngine(Protocol):
    model_name: str  # the name clients ask for
    device: object  # where it runs (str() of it is advertised)
    # what bounds a request here; the worker registers it so that the scheduler refuses what
    # can never run before queueing it (None: no model, nothing to check)
    limits: ModelLimits | None

    @property
    def max_num_seqs(self) -> int:
        """Requests one iteration runs at most (the worker takes twice as many by default)."""
        ...

    def add_request(
        self,
        request_id: str,
        prompt: Prompt,
        sampling_params: SamplingParams,
        sparse_config: SparseConfig | None = None,
        *,
        provisional: bool = False,
    ) -> None:
        """Queue a request, or raise ValidationError / CapacityError (nothing queued).
        `provisional`: its updates carry the steps' provisional tokens (StepOutput)."""
        ...

    def has_request(self, request_id: str) -> bool:
        """Whether the request is waiting or running."""
        ...

    def abort(self, request_id: str) -> bool:
        """Drop a request now (no more updates for it); False when it is not here."""
        ...

    def has_unfinished(self) -> bool:
        """Whether a `step()` has work: a request waits, runs, or has results on the way."""
        ...

    def step(self) -> list[StepOutput]:
        """One iteration: the updates of every request that took a step."""
        ...

    def stats(self) -> dict[str, int]:
        """running, waiting, free_pages, total_pages, max_num_seqs (the heartbeat's figures)."""
        ...

    def decode(self, token_ids: list[int]) -> str:
        """Text of token ids, special tokens skipped (the worker renders canvases with it)."""
        ...

    def warm_up(self) -> None:
        """Run the iterations of a first request and one joining it, so that compiling and
        capturing them happens before the worker takes traffic (a GPU worker calls it)."""
        ...
