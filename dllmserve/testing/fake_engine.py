"""A stand-in for `Engine` with the interface the worker loop uses, for service tests and the
relay benchmark: the service path runs for real, only the model is missing."""

from __future__ import annotations

import time

from dllmserve.engine.outputs import RequestOutput, StepUpdate


class _Tok:
    def decode(self, ids, skip_special_tokens=True):
        return bytes(i % 128 for i in ids if i > 0).decode(errors="replace")


class FakeEngine:
    """Each step (sleeping `step_s`, which leaves the CPU free as a GPU step does) commits one
    token per running request; a request finishes after its `steps`. `added` lists the request
    ids in the order they reached the engine."""

    model_name = "fake"
    stop_ids = [0]
    max_num_seqs = 256
    device = "cpu"

    def __init__(self, step_s: float = 0.0) -> None:
        self.step_s = step_s
        self.tokenizer = _Tok()
        self.running: dict[str, list] = {}  # id -> [steps done, total steps, gen length, prompt]
        self.added: list[str] = []

    def add_request(self, rid, prompt, params, sparse=None) -> None:
        ids = list(prompt) if isinstance(prompt, list) else []
        self.running[rid] = [0, params.steps, params.gen_length, ids]
        self.added.append(rid)

    def has_request(self, rid) -> bool:
        return rid in self.running

    def abort(self, rid) -> bool:
        return self.running.pop(rid, None) is not None

    def has_unfinished(self) -> bool:
        return bool(self.running)

    def stats(self) -> dict:
        return {"running": len(self.running), "waiting": 0, "free_pages": 1, "total_pages": 1,
                "max_num_seqs": self.max_num_seqs}  # fmt: skip

    def step(self) -> list[StepUpdate]:
        if self.step_s:
            time.sleep(self.step_s)
        out = []
        for rid, st in list(self.running.items()):
            st[0] += 1
            k, total, gen = st[0], st[1], st[2]
            pos = (k - 1) % gen
            done = k >= total
            u = StepUpdate(rid, k, total, 0, [pos], [65 + pos % 26], total - k, finished=done)
            if done:
                del self.running[rid]
                u.output = RequestOutput(rid, st[3], [65] * gen, "A" * gen, "length", k, k)
            out.append(u)
        return out
