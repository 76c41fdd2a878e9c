"""The worker's leaving and coming back, its inbox bookkeeping and its heartbeat, each on its
own against a real redis-server (no worker loop, no scheduler process): a drain hands back
every batch it never read and every request it could not finish, then deregisters; a stall
withdraws the registration; a rejoin serves under a fresh id; an inbox entry is acknowledged
with its last request; a beat writes what the loop's snapshot says."""

from __future__ import annotations

import threading
import time

from svc_util import enqueue, lua_assign

from dllmserve.broker import redis_keys as rk
from dllmserve.broker.inbox_entry import InboxEntry
from dllmserve.broker.scripts import Broker
from dllmserve.broker.workers import WorkerRecord
from dllmserve.worker.config import WorkerConfig
from dllmserve.worker.heartbeat import Heartbeat, fixed_record
from dllmserve.worker.inbox import OpenEntries, read_entries
from dllmserve.worker.membership import Membership
from dllmserve.worker.snapshot import Snapshot


def _status(r, rid: str) -> str:
    return rk.text(r.hget(rk.req_key(rid), "status"))


def _queued_ids(r) -> list[str]:
    return [rk.text(f[b"id"]) for _eid, f in r.xrange(rk.PENDING)]


def _register(r, wid: str) -> None:
    pipe = r.pipeline(transaction=False)
    WorkerRecord(model="m", slots=16, state="ready").write(pipe, wid, 60_000)
    pipe.execute()


def test_a_drain_hands_back_every_request_it_holds_and_deregisters(r):
    b = Broker(r)
    for rid in ("run", "u1", "u2", "u3", "late"):
        enqueue(b, rid)
    m = Membership(r, "w", drain_timeout_s=30)
    m.ensure_group()
    _register(r, "w")
    lua_assign(r, b, "w", {"run"})
    [entry] = read_entries(r, "w", count=1)  # the loop read this one and runs it
    assert entry.request_ids == ("run",) and b.start("run", worker="w") is not None
    lua_assign(r, b, "w", {"u1", "u2"})  # two batches never read
    lua_assign(r, b, "w", {"u3"})
    seen = []

    def finish(deadline: float) -> list[str]:
        # by now the hash says draining and the unread batches are back in the queue
        state = rk.text(r.hget(rk.worker_key("w"), "state"))
        seen.append(("finish", state, [_status(r, x) for x in ("u1", "u2", "u3")]))
        assert deadline > time.monotonic()  # the drain's bound lies ahead
        return ["run"]  # out of time: the loop aborted it

    def before_leave() -> None:
        seen.append(("before_leave", _status(r, "run")))
        # a beat sent meanwhile said "ready" again and the dispatcher gave us one more batch
        r.hset(rk.worker_key("w"), "state", "ready")
        lua_assign(r, b, "w", {"late"})

    m.drain(finish, before_leave)
    assert seen == [
        ("finish", "draining", [rk.QUEUED] * 3),
        ("before_leave", rk.QUEUED),  # the unfinished one went back before the heartbeat stopped
    ]
    for rid in ("run", "u1", "u2", "u3", "late"):
        assert _status(r, rid) == rk.QUEUED, rid
    assert sorted(_queued_ids(r)) == ["late", "run", "u1", "u2", "u3"]
    assert rk.text(r.hget(rk.req_key("run"), "worker")) == ""  # nobody holds it
    # the one that ran comes back as a new attempt, not charged with a crash
    assert r.hmget(rk.req_key("run"), "attempt", "crashes") == [b"2", None]
    for key in (rk.worker_key("w"), rk.inbox_key("w"), rk.load_key("w"), rk.ctl_key("w")):
        assert not r.exists(key), key
    assert not r.sismember(rk.WORKERS, "w")


def test_a_stall_withdraws_the_registration_and_a_rejoin_takes_a_fresh_id(r):
    m = Membership(r, "w", drain_timeout_s=30)
    m.ensure_group()
    _register(r, "w")
    m.withdraw(ran_s=90.0, limit_s=60.0)
    assert not r.exists(rk.worker_key("w"))
    assert r.sismember(rk.WORKERS, "w")  # left for the dispatcher, which reaps it at once
    assert m.rejoin() == "w.1" and m.id == "w.1"
    assert [g["name"] for g in r.xinfo_groups(rk.inbox_key("w.1"))] == [rk.INBOX_GROUP.encode()]
    assert m.rejoin() == "w.2"
    # the fresh id is the one requests are handed back under
    b = Broker(r)
    enqueue(b, "x")
    lua_assign(r, b, "w.2", {"x"})
    m.hand_back_unread()
    assert _status(r, "x") == rk.QUEUED and int(r.get(rk.load_key("w.2"))) == 0


def test_an_inbox_entry_is_acknowledged_with_its_last_request(r):
    Membership(r, "w", drain_timeout_s=30).ensure_group()
    for ids in (("a", "b"), ("c",), ("d",)):
        r.xadd(rk.inbox_key("w"), InboxEntry("", ids).fields())
    (e1, ab), (e2, c), (e3, d) = (
        (e.entry_id, list(e.request_ids)) for e in read_entries(r, "w", count=16)
    )
    assert (ab, c, d) == (["a", "b"], ["c"], ["d"])
    entries = OpenEntries(r)

    def unacked() -> set[str]:
        pending = r.xpending_range(rk.inbox_key("w"), rk.INBOX_GROUP, "-", "+", 10)
        return {rk.text(p["message_id"]) for p in pending}

    entries.opened("w", e1, ab)
    entries.opened("w", e2, [])  # none taken (cancelled meanwhile): acknowledged at once
    entries.opened("w", e3, d)
    assert unacked() == {e1, e3} and r.xlen(rk.inbox_key("w")) == 2
    entries.ended(e1, "a")
    assert unacked() == {e1, e3}
    entries.ended(e1, "b")
    assert unacked() == {e3} and r.xlen(rk.inbox_key("w")) == 1
    entries.clear()  # the dispatcher took the rest back: nothing acknowledged from here on
    entries.ended(e3, "d")
    assert unacked() == {e3} and len(entries) == 0


def _heartbeat(r, snap: dict, **events: threading.Event) -> Heartbeat:
    ev = {k: events.get(k, threading.Event()) for k in ("draining", "paused", "reaped")}
    fixed = fixed_record("m", "cpu", 8, None)
    return Heartbeat(r, WorkerConfig(), fixed, lambda: snap["now"], **ev)


def test_a_beat_writes_the_loops_snapshot_and_notices_it_was_reaped(r):
    stats = {"running": 3, "waiting": 1, "free_pages": 7, "total_pages": 9, "max_num_seqs": 4}
    snap = {"now": Snapshot("w", steps=12, stats=stats)}
    draining, reaped = threading.Event(), threading.Event()
    hb = _heartbeat(r, snap, draining=draining, reaped=reaped)
    assert not hb.registered
    hb.beat()
    rec = WorkerRecord.parse(r.hgetall(rk.worker_key("w")))
    assert (rec.state, rec.running, rec.waiting, rec.steps) == ("ready", 3, 1, 12)
    assert (rec.free_pages, rec.total_pages, rec.max_num_seqs) == (7, 9, 4)
    assert (rec.model, rec.device, rec.slots) == ("m", "cpu", 8)
    assert hb.registered and r.sismember(rk.WORKERS, "w") and not reaped.is_set()
    draining.set()
    hb.beat()
    assert WorkerRecord.parse(r.hgetall(rk.worker_key("w"))).state == "draining"
    r.srem(rk.WORKERS, "w")  # the dispatcher reaped us
    hb.beat()
    assert reaped.is_set()
    snap["now"] = Snapshot("w.1")  # the loop rejoined under a fresh id
    assert not hb.registered
    hb.beat()
    assert hb.registered and r.sismember(rk.WORKERS, "w.1")


def test_a_beat_racing_the_watchdog_leaves_no_registration(r):
    """The watchdog withdrew the worker while a beat was on its way: the beat takes its own
    registration back, so the dispatcher still reaps the stalled worker."""
    paused = threading.Event()
    hb = _heartbeat(r, {"now": Snapshot("w")}, paused=paused)
    paused.set()  # tripped after the beat's check, before its write landed
    hb.beat()
    assert not r.exists(rk.worker_key("w")) and not hb.registered
