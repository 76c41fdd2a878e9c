"""The hardening pieces on their own, against a real redis-server: the dispatch gate of a
draining worker, the per-client queue count, tenant-owned ids, the sweep of a vanished worker,
the wire parser and the watchdog."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from svc_util import enqueue as _enqueue
from svc_util import lua_assign as _assign
from svc_util import ready as _ready

from dllmserve.broker import redis_keys as rk
from dllmserve.broker.scripts import Broker, Cancel, Enqueue, Enqueued, Reclaim
from dllmserve.v1 import dllm_pb2 as pb


def test_assign_refuses_a_worker_that_is_not_ready(r):
    """A draining (or vanished) worker gets no batch: the requests stay queued and pending."""
    sc = Broker(r)
    _enqueue(sc, "a")
    _ready(r, "w1")
    r.hset(rk.worker_key("w1"), "state", "draining")
    assert _assign(r, sc, "w1", {"a"}) is None
    r.delete(rk.worker_key("w1"))
    r.hset(rk.worker_key("w1"), "model", "m")  # a hash without a state: not ready either
    assert _assign(r, sc, "w1", {"a"}) is None
    assert r.hget(rk.req_key("a"), "status") == b"queued" and r.xlen(rk.PENDING) == 1
    assert not r.exists(rk.inbox_key("w1")) and not r.exists(rk.load_key("w1"))
    r.hset(rk.worker_key("w1"), "state", "ready")
    assert _assign(r, sc, "w1", {"a"}) == ["a"]
    assert r.zrange(rk.ASSIGNED, 0, -1) == [b"a"]


def test_per_client_queue_cap_counts_only_waiting_requests(r):
    sc = Broker(r)

    def queued():
        return {rk.text(k): int(v) for k, v in r.hgetall(rk.QUEUED_BY_CLIENT).items()}

    got = [_enqueue(sc, f"a{i}", client="ip:A", per_client=2) for i in range(3)]
    assert [g.outcome for g in got] == [Enqueue.QUEUED, Enqueue.QUEUED, Enqueue.CLIENT_CAP]
    assert got[2].value == "2"
    # another client is not capped
    assert _enqueue(sc, "b0", client="ip:B", per_client=2).outcome is Enqueue.QUEUED
    assert queued() == {"ip:A": 2, "ip:B": 1}
    assert _assign(r, sc, "w1", {"a0"}) == ["a0"]  # dispatched: no longer waiting
    assert sc.cancel("a1", code="CANCELLED", msg="x", ttl_s=60) is Cancel.CANCELLED
    assert queued() == {"ip:B": 1}
    assert _enqueue(sc, "a3", client="ip:A", per_client=2).outcome is Enqueue.QUEUED
    # a requeued request waits again
    got = sc.reclaim("a0", worker="w1", max_attempts=3, ttl_s=60, charge="1")
    assert got is Reclaim.REQUEUED
    assert queued() == {"ip:A": 2, "ip:B": 1}


def test_enqueue_hides_another_tenants_request_id(r):
    sc = Broker(r)
    assert _enqueue(sc, "x", client="t:alice", owned=True).outcome is Enqueue.QUEUED
    assert _enqueue(sc, "x", client="t:bob", owned=True) == Enqueued(Enqueue.NOT_YOURS, "")
    got = _enqueue(sc, "x", prompt="other", client="t:bob", owned=True)
    assert got == Enqueued(Enqueue.NOT_YOURS, "")
    assert _enqueue(sc, "x", client="t:alice", owned=True) == Enqueued(Enqueue.DUPLICATE, "queued")


def test_sweep_takes_back_requests_of_a_worker_that_left_without_a_trace(rserver, r):
    """A request dispatched to a worker whose heartbeat is gone and that is not even registered
    (so the reaper never looks at it) is queued again by the sweep; one of a live worker stays."""
    from dllmserve.scheduler.dispatcher import Dispatcher

    sc = Broker(r)
    for rid in ("lost", "kept"):
        _enqueue(sc, rid)
    assert _assign(r, sc, "ghost", {"lost"}) == ["lost"]
    assert _assign(r, sc, "alive", {"kept"}) == ["kept"]
    r.delete(rk.worker_key("ghost"), rk.inbox_key("ghost"))  # gone, inbox and all

    async def sweep():
        client = aioredis.Redis.from_url(rserver.url)
        try:
            await Dispatcher(client, "sched-test").sweep_orphans()
        finally:
            await client.aclose()

    asyncio.run(sweep())
    assert r.hget(rk.req_key("lost"), "status") == b"queued"
    assert [rk.text(f[b"id"]) for _, f in r.xrange(rk.PENDING)] == ["lost"]
    assert r.hget(rk.req_key("kept"), "status") == b"dispatched"
    assert r.zrange(rk.ASSIGNED, 0, -1) == [b"kept"]


def test_wire_parser_refuses_garbage_and_mistyped_fields():
    from dllmserve.scheduler.registration import Malformed, parser

    parse = parser(pb.GenerateRequest)
    assert parse(b"\xff\xff\xff") == Malformed(
        "request", "is not a valid dllmserve.v1.GenerateRequest (3 bytes)"
    )
    assert isinstance(parse(bytes([0x12, 2, 0xFF, 0xFE])), Malformed)  # text: bad UTF-8
    assert parse(bytes([16, 5])).field == "text"  # text (a string) sent as a varint
    inner = bytes([0x10, 1])  # ChatMessage.content (a string, field 2) sent as a varint
    chat = bytes([0x0A, len(inner)]) + inner
    assert parse(bytes([0x22, len(chat)]) + chat).field == "messages.messages[0].content"
    msgs = pb.GenerateRequest(messages=pb.ChatMessages(messages=[pb.ChatMessage(role="user")]))
    assert parse(msgs.SerializeToString()) == msgs
    assert parse(b"") == pb.GenerateRequest()  # empty is a valid (empty) message


def test_watchdog_trips_once_on_an_iteration_far_past_the_average():
    from dllmserve.worker.watchdog import Watchdog

    stalls = []
    wd = Watchdog(factor=3, floor_s=0.2, on_stall=lambda ran, limit: stalls.append((ran, limit)))
    for _ in range(5):
        with wd.iteration():
            pass
    assert wd.limit_s() == 0.2  # tiny iterations: the floor rules
    wd.start()
    try:
        with wd.iteration():
            wd.tripped.wait(30)  # stuck until the watchdog notices
        assert wd.tripped.is_set() and len(stalls) == 1
        ran, limit = stalls[0]
        assert ran > limit == 0.2
        avg = wd.average_s
        wd.reset()
        with wd.iteration():
            pass
        assert wd.average_s <= avg + 0.2  # the stalled iteration never entered the average
    finally:
        wd.halt.set()
        wd.join(5)
