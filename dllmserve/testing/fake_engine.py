"""A model-free `StepEngine` (dllmserve.engine.protocol) for the service tests and the relay
benchmark: the service path runs for real, only the model is missing."""

from __future__ import annotations

import time

from dllmserve.engine.outputs import RequestOutput, StepOutput
from dllmserve.engine.protocol import Prompt
from dllmserve.sampling_params import SamplingParams
from dllmserve.sparse.state import SparseConfig


class FakeEngine:
    """Each step (sleeping `step_s`, which leaves the CPU free as a GPU step does) commits one
    token (a capital letter, left to right: its text is the delta) per running request; a
    request finishes after its `steps`.
    `added` lists the request ids in the order they reached the engine."""

    model_name = "fake"
    device = "cpu"
    limits = None  # no model: the scheduler checks only the wire fields

    def __init__(self, step_s: float = 0.0, max_num_seqs: int = 256) -> None:
        self.step_s = step_s
        self._max_num_seqs = max_num_seqs
        self.running: dict[str, list] = {}  # id -> [steps done, total steps, gen length, prompt]
        self.added: list[str] = []

    @property
    def max_num_seqs(self) -> int:
        return self._max_num_seqs

    def add_request(
        self,
        request_id: str,
        prompt: Prompt,
        sampling_params: SamplingParams,
        sparse_config: SparseConfig | None = None,
        *,
        provisional: bool = False,  # no model, no proposals: its updates carry none
    ) -> None:
        ids = list(prompt) if isinstance(prompt, list) else []
        p = sampling_params
        self.running[request_id] = [0, p.steps, p.gen_length, ids]
        self.added.append(request_id)

    def has_request(self, request_id: str) -> bool:
        return request_id in self.running

    def abort(self, request_id: str) -> bool:
        return self.running.pop(request_id, None) is not None

    def has_unfinished(self) -> bool:
        return bool(self.running)

    def stats(self) -> dict[str, int]:
        return {
            "running": len(self.running),
            "waiting": 0,
            "free_pages": 1,
            "total_pages": 1,
            "max_num_seqs": self.max_num_seqs,
        }

    def decode(self, token_ids: list[int]) -> str:
        return bytes(i % 128 for i in token_ids if i > 0).decode(errors="replace")

    def warm_up(self) -> None:
        """Nothing to compile or capture."""

    def step(self) -> list[StepOutput]:
        if self.step_s:
            time.sleep(self.step_s)
        out = []
        for rid, st in list(self.running.items()):
            st[0] += 1
            k, total, gen = st[0], st[1], st[2]
            pos = (k - 1) % gen
            done = k >= total
            token = 65 + pos % 26
            u = StepOutput(
                rid,
                k,
                total,
                block_index=0,
                phase="FULL",
                block_length=gen,
                positions=[pos],
                token_ids=[token],
                masked_left=total - k,
                block_done=done,
                text_delta=chr(token) if k <= gen else "",
            )
            if done:
                del self.running[rid]
                u.finish_reason = "length"
                u.output = RequestOutput(rid, st[3], [65] * gen, "A" * gen, "length", k, k)
            out.append(u)
        return out
