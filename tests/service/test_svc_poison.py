"""Poison isolation with real processes: a request that crashes or stalls its worker is found
among its batch-mates and dead-lettered alone; every other request finishes with the tokens of
a fault-free run and is never charged a crash (docs/service.md, "Poison isolation").

Two CPU workers serve the shipped demo model (trained: its answers do not hinge on near-ties
that another batch composition could flip, as a random checkpoint's do). A crashed worker is
restarted by a small supervisor thread, as an orchestrator would; a stalled one comes back by
itself once its step returns.
"""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest
from svc_util import Cluster, Stream, check_unbroken, wait_for

import dllmserve
from dllmserve.broker import redis_keys as rk
from dllmserve.client import Client

SP = {"gen_length": 8, "steps": 4, "seed": 3, "stop_at_eos": False}
CRASH_ENV = {"DLLMSERVE_FAULT_CRASH_ON_TEXT": "POISON"}
STALL_ENV = {"DLLMSERVE_FAULT_STALL_ON_TEXT": "POISON", "DLLMSERVE_FAULT_STALL_S": "5"}
WATCHDOG = ("--stall-floor", "2", "--stall-factor", "10")
# both workers may be down at once while the supervisor restarts them
SCHEDULER = ("--max-attempts", "2", "--worker-wait", "120")


DEMO = Path(dllmserve.__file__).parent / "assets" / "tiny-llada"


@pytest.fixture
def demo_cluster(tmp_path):
    c = Cluster(tmp_path / "cluster", DEMO)
    yield c
    c.close()


class Supervisor(threading.Thread):
    """Starts a fresh worker for each one that exits (a crash poison's victims)."""

    def __init__(self, cluster, env: dict, *args: str) -> None:
        super().__init__(daemon=True)
        self.c, self.env, self.args = cluster, env, args
        self.halt = threading.Event()
        self.restarts = 0

    def run(self) -> None:
        while not self.halt.wait(0.2):
            for p in list(self.c.workers):
                if p.poll() is not None and not getattr(p, "replaced", False):
                    p.replaced = True  # type: ignore[attr-defined]
                    self.restarts += 1
                    self.c.add_worker(*self.args, env=self.env, wait=False)


def _run_with_poisons(c, normal: int, poisons: int) -> tuple[list[Stream], list[Stream]]:
    """`normal` innocent streams and `poisons` poison ones, sent together."""
    good = [Stream(c.target, f"n{i}", SP, prompt=f"innocent {i}") for i in range(normal)]
    bad = [Stream(c.target, f"p{i}", SP, prompt=f"POISON {i}") for i in range(poisons)]
    every = good[: normal // 2] + bad + good[normal // 2 :]
    for s in every:
        s.start()
    for s in every:
        s.join(600)
    return good, bad


def _check(c, good: list[Stream], bad: list[Stream]) -> None:
    for s in bad:
        assert s.error is not None and s.error.code() == grpc.StatusCode.ABORTED, s.error
        assert "running alone" in s.error.details()
        assert c.req(s.args[1])["status"] == rk.DEAD_STATUS
    dead = sorted(rk.text(f[b"id"]) for _id, f in c.client.xrange(rk.DEAD))
    assert dead == sorted(s.args[1] for s in bad)
    for s in good:
        check_unbroken(s, SP["gen_length"])
        assert c.req(s.args[1]).get("crashes", "0") == "0", "an innocent was charged"
    # The fault-free tokens: each innocent again, alone, on a worker that nothing disturbs.
    with Client(c.target) as cl:
        for s in good:
            ref = cl.generate_text(s.args[3], sampling_params=SP, sparse_config={}, timeout=120)
            assert list(ref.token_ids) == list(s.completed().token_ids)


def _two_workers(c, env: dict, *args: str) -> None:
    w1, w2 = c.add_worker(*args, env=env, wait=False), c.add_worker(*args, env=env, wait=False)
    c.wait_worker(w1)
    c.wait_worker(w2)


@pytest.mark.parametrize(("normal", "poisons"), [(20, 1), (8, 2)])
def test_crash_poisons_are_isolated(demo_cluster, normal, poisons):
    c = demo_cluster
    c.add_scheduler(*SCHEDULER)
    _two_workers(c, CRASH_ENV)
    sup = Supervisor(c, CRASH_ENV)
    sup.start()
    try:
        good, bad = _run_with_poisons(c, normal, poisons)
    finally:
        sup.halt.set()
        sup.join()
    _check(c, good, bad)
    assert sup.restarts >= 2 * poisons  # each poison took down max_attempts workers alone
    wait_for(lambda: sum(p.poll() is None for p in c.workers) == 2, what="two live workers")


def test_a_stall_poison_is_isolated(demo_cluster):
    c = demo_cluster
    c.add_scheduler(*SCHEDULER)
    _two_workers(c, STALL_ENV, *WATCHDOG)
    good, bad = _run_with_poisons(c, 20, 1)
    _check(c, good, bad)
    assert all(p.poll() is None for p in c.workers), "a stalled worker comes back by itself"
