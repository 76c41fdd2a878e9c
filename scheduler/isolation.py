"""Poison isolation: a request that crashes or stalls its worker harms no one else.

When a worker dies or stalls, the requests it was running are *suspects*: any of them may be
the cause. They run again (attempt + 1) isolated, in two halves of their own, each half on a
worker that holds nothing else (its `dllm:iso:{worker}` names the half's tag). A half that
finishes clears its members; a half that takes its worker down is split again. A request that
takes down a worker while running *alone* is charged a crash, and dead-lettered at
`max_attempts` crashes; no other request is ever charged for it. So a poison among N requests
is found after about log2(N) crashes, and the innocent ones finish with the tokens of a
fault-free run (docs/service.md, "Poison isolation").
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from dllmserve.broker.scripts import CHARGED, HANDED_BACK, SUSPECT


@dataclass
class Verdict:
    charge: str  # CHARGED: it ran alone when its worker went down; SUSPECT: one of several
    tag: str  # the isolation tag it runs under from now on


NOT_STARTED = Verdict(HANDED_BACK, "")  # handed out but never started: queued again as it was


def new_tag() -> str:
    return uuid.uuid4().hex[:12]


def verdicts(running: list[str]) -> dict[str, Verdict]:
    """What becomes of each request that was running on a worker that went down."""
    if len(running) == 1:
        return {running[0]: Verdict(CHARGED, new_tag())}
    half = (len(running) + 1) // 2
    first, second = new_tag(), new_tag()
    return {rid: Verdict(SUSPECT, first if i < half else second) for i, rid in enumerate(running)}


@dataclass
class Candidate:
    """A live worker as the dispatcher sees it for one pass."""

    worker_id: str
    model: str
    free: int
    load: int = 0
    iso: str = ""  # the tag of the suspects it holds (meaningful while load > 0)

    @property
    def isolating(self) -> bool:
        return bool(self.iso) and self.load > 0


def place(tag: str, model: str, workers: list[Candidate], reserved: set[str]) -> Candidate | None:
    """The worker a suspect group goes to now, or None (it waits). A worker already holding
    the tag takes the rest of it; else the least loaded worker of the model that holds no
    suspects is reserved for it (no other work reaches it) and takes it once it is empty."""
    fit = [w for w in workers if (not model or w.model == model) and w.worker_id not in reserved]
    for w in fit:
        if w.iso == tag and w.load > 0:
            reserved.add(w.worker_id)
            return w if w.free > 0 else None
    free = [w for w in fit if not w.isolating]
    if not free:
        return None
    w = min(free, key=lambda w: (w.load, w.worker_id))
    reserved.add(w.worker_id)
    return w if w.load == 0 and w.free > 0 else None
