"""The contract between the scheduler and the workers (dllmserve.broker), against a real
redis-server: every outcome of every script, by name."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from svc_util import enqueue as _enqueue
from svc_util import lua_assign as _assign

from dllmserve.broker import redis_keys as rk
from dllmserve.broker.admission import Admission
from dllmserve.broker.inbox_entry import InboxEntry, decode_all, read_all
from dllmserve.broker.records import QueuedView
from dllmserve.broker.scripts import (
    AsyncBroker,
    Broker,
    Cancel,
    Completion,
    Enqueue,
    Enqueued,
    Reclaim,
    Started,
    StepRecord,
    StoredRequest,
)
from dllmserve.sampling_params import SamplingParams

ADM = Admission([5, 6, 7], SamplingParams(gen_length=16, steps=8, seed=3), None)


def test_enqueue_stores_the_named_fields_and_names_every_outcome(r):
    b = Broker(r)
    req = StoredRequest(request_id="a", admission=ADM, model="m", priority=3, deadline=12.5,
                        options=b"opts", client="ip:c", quota="ip:c|c:x", last_step=40,
                        ttl_s=90)  # fmt: skip
    assert b.enqueue(req, max_queue=10, per_client=2) == Enqueued(Enqueue.QUEUED, "1")
    h = r.hgetall(rk.req_key("a"))
    assert h[b"admission"] == ADM.encode() and h[b"model"] == b"m" and h[b"priority"] == b"3"
    assert float(h[b"deadline"]) == 12.5 and h[b"opts"] == b"opts" and h[b"steps"] == b"40"
    assert h[b"ttl"] == b"90" and h[b"quota"] == b"ip:c|c:x" and h[b"status"] == b"queued"
    assert b"group" not in h and b"body" not in h  # no wire bytes: the admission is the request
    assert r.hgetall(rk.QUEUED_BY_CLIENT) == {b"ip:c|c:x": b"1"}
    assert b.enqueue(req, max_queue=10) == Enqueued(Enqueue.DUPLICATE, "queued")
    other_sampling = Admission(ADM.prompt, SamplingParams(gen_length=16, steps=8, seed=4), None)
    for change in ({"admission": other_sampling}, {"model": "m2"}, {"priority": 4}):
        other = StoredRequest(**{**req.__dict__, **change})
        assert b.enqueue(other, max_queue=10) == Enqueued(Enqueue.CONFLICT, "queued"), change
    assert _enqueue(b, "z", max_queue=1) == Enqueued(Enqueue.QUEUE_FULL, "1")
    assert _enqueue(b, "a", client="t:other", owned=True) == Enqueued(Enqueue.NOT_YOURS, "")
    assert _enqueue(b, "q1", client="ip:d", per_client=1).outcome is Enqueue.QUEUED
    assert _enqueue(b, "q2", client="ip:d", per_client=1) == Enqueued(Enqueue.CLIENT_CAP, "1")
    assert not r.exists(rk.req_key("z")) and not r.exists(rk.req_key("q2"))


def test_the_dispatcher_view_of_a_queued_request(r):
    b = Broker(r)
    _enqueue(b, "v", prio=7, model="mm")
    pipe = r.pipeline(transaction=False)
    QueuedView.read(pipe, "v")
    QueuedView.read(pipe, "gone")
    view, gone = (QueuedView.parse(x) for x in pipe.execute())
    assert (view.status, view.priority, view.model, view.iso) == ("queued", 7, "mm", "")
    assert view.deadline == 0.0 and view.enqueued_at > 0
    assert gone == QueuedView("", 0, 0.0, "", "", 0.0)


def test_start_names_its_reply_and_refuses_what_is_not_dispatched_to_it(r):
    b = Broker(r)
    _enqueue(b, "s", prompt="B")
    assert b.start("s", worker="w1", ttl_s=60) is None  # queued, not dispatched
    assert _assign(r, b, "w1", {"s"}) == ["s"]
    assert b.start("s", worker="w2", ttl_s=60) is None  # another worker's
    got = b.start("s", worker="w1", ttl_s=60)
    assert isinstance(got, Started) and (got.attempt, got.deadline) == (1, 0.0)
    assert got.admission == Admission("B", SamplingParams(gen_length=8, steps=8), None)
    assert got.enqueued_at > 0 and got.options == b""
    assert r.hget(rk.req_key("s"), "status") == b"running"
    # cancelled between dispatch and start: start ends it and answers None
    _enqueue(b, "c")
    _assign(r, b, "w1", {"c"})
    assert b.cancel("c", code="CANCELLED", msg="bye", ttl_s=60) is Cancel.CANCELLING
    assert b.start("c", worker="w1", ttl_s=60) is None
    assert r.hget(rk.req_key("c"), "status") == b"cancelled"


def test_cancel_names_every_outcome(r):
    b = Broker(r)
    assert b.cancel("nobody", code="CANCELLED", msg="x", ttl_s=60) is Cancel.NOT_FOUND
    _enqueue(b, "q")
    assert b.cancel("q", code="CANCELLED", msg="x", ttl_s=60) is Cancel.CANCELLED
    assert b.cancel("q", code="CANCELLED", msg="x", ttl_s=60) is Cancel.CANCELLED  # terminal
    _enqueue(b, "run")
    _assign(r, b, "w1", {"run"})
    b.start("run", worker="w1", ttl_s=60)
    assert b.cancel("run", code="CANCELLED", msg="x", ttl_s=60) is Cancel.CANCELLING
    ctl = r.xrange(rk.ctl_key("w1"))
    assert [f[b"id"] for _, f in ctl] == [b"run"]
    _enqueue(b, "d")
    _assign(r, b, "w1", {"d"})
    b.start("d", worker="w1", ttl_s=60)
    assert b.finish("d", worker="w1", attempt=1, status=rk.DONE, ttl_s=60, final=Completion(b""))
    assert b.cancel("d", code="CANCELLED", msg="x", ttl_s=60) is Cancel.DONE


def test_reclaim_names_every_outcome(r):
    b = Broker(r)
    for rid in ("u", "c", "x"):
        _enqueue(b, rid)
    _assign(r, b, "w1", {"u", "c", "x"})
    assert b.reclaim("u", worker="w2", max_attempts=3, ttl_s=60, charge="1") is Reclaim.SKIP
    assert b.reclaim("u", worker="w1", max_attempts=3, ttl_s=60, charge="1") is Reclaim.REQUEUED
    b.cancel("c", code="CANCELLED", msg="x", ttl_s=60)
    assert b.reclaim("c", worker="w1", max_attempts=3, ttl_s=60, charge="1") is Reclaim.CANCELLED
    b.start("x", worker="w1", ttl_s=60)
    assert b.reclaim("x", worker="w1", max_attempts=1, ttl_s=60, charge="1") is Reclaim.DEAD


def test_drop_queued_publishes_the_error_only_for_a_queued_request(r):
    b = Broker(r)
    _enqueue(b, "e")
    (eid, _), *_ = r.xrange(rk.PENDING)
    assert b.drop_queued(rk.text(eid), "e", status=rk.EXPIRED, code="DEADLINE_EXCEEDED",
                         msg="late", ttl_s=60)  # fmt: skip
    assert r.hget(rk.req_key("e"), "status") == b"expired" and r.xlen(rk.PENDING) == 0
    rec = r.xrange(rk.res_key("e"))[-1][1]
    assert rec[b"k"] == rk.REC_ERROR.encode() and rec[b"code"] == b"DEADLINE_EXCEEDED"
    assert not b.drop_queued("0-1", "e", status=rk.EXPIRED, code="X", msg="x", ttl_s=60)


def test_publish_steps_and_finish_write_the_records(r):
    b = Broker(r)
    _enqueue(b, "p")
    _assign(r, b, "w1", {"p"})
    b.start("p", worker="w1", ttl_s=60)
    b.publish_steps([StepRecord("p", 1, b"S1", first=True),
                     StepRecord("gone", 1, b"S", first=True)], ttl_s=60)  # fmt: skip
    (_, step), = r.xrange(rk.res_key("p"))  # fmt: skip
    assert step == {b"a": b"1", b"k": rk.REC_STEP.encode(), b"p": b"S1"}  # block_done: in p
    assert r.hexists(rk.req_key("p"), "t_first") and not r.exists(rk.res_key("gone"))
    assert not b.finish(
        "p", worker="w1", attempt=2, status=rk.DONE, ttl_s=60, final=Completion(b"")
    )
    assert b.finish("p", worker="w1", attempt=1, status=rk.DONE, ttl_s=60,
                    final=Completion(b"F"))  # fmt: skip
    assert r.xrange(rk.res_key("p"))[-1][1] == {b"a": b"1", b"k": b"c", b"p": b"F"}
    assert r.get(rk.load_key("w1")) == b"0" and r.zrange(rk.ASSIGNED, 0, -1) == []


def test_the_asyncio_broker_makes_the_same_calls(rserver, r):
    async def run() -> tuple:
        client = aioredis.Redis.from_url(rserver.url)
        try:
            b = AsyncBroker(client)
            req = StoredRequest("as", ADM, "m", 0, 0.0, b"", "ip:c", "", 8, 60)
            got = await b.enqueue(req, max_queue=5)
            held = await b.lease_acquire("s1", ttl_ms=5000)
            other = await b.lease_acquire("s2", ttl_ms=5000)
            released = await b.lease_release("s1")
            cancelled = await b.cancel("as", code="CANCELLED", msg="x", ttl_s=60)
            return got, held, other, released, cancelled
        finally:
            await client.aclose()

    got, held, other, released, cancelled = asyncio.run(run())
    assert got == Enqueued(Enqueue.QUEUED, "1") and cancelled is Cancel.CANCELLED
    assert held and not other and released and not r.exists(rk.LEASE)


def test_an_inbox_entry_is_what_assign_writes_and_every_reader_decodes(rserver, r):
    b = Broker(r)
    for rid in ("i1", "i2", "i3"):
        _enqueue(b, rid)
    b.cancel("i2", code="CANCELLED", msg="x", ttl_s=60)  # no longer queued: left out
    assert _assign(r, b, "w1", {"i1", "i2", "i3"}) == ["i1", "i3"]
    (written,) = decode_all(read_all(r, "w1"))
    assert written.request_ids == ("i1", "i3") and written.entry_id == rk.text(
        r.xrange(rk.inbox_key("w1"))[0][0]
    )
    assert written.fields() == {
        k.decode(): v.decode() for k, v in r.xrange(rk.inbox_key("w1"))[0][1].items()
    }
    eid = rk.text(r.xadd(rk.inbox_key("w1"), InboxEntry("", ("a.1", "b:2")).fields()))
    r.xadd(rk.inbox_key("w1"), {"other": "x"})  # no ids: an entry holding none

    async def read_async() -> list[InboxEntry]:
        client = aioredis.Redis.from_url(rserver.url)
        try:
            return decode_all(await read_all(client, "w1"))
        finally:
            await client.aclose()

    entries = asyncio.run(read_async())
    assert entries[:2] == [written, InboxEntry(eid, ("a.1", "b:2"))]
    assert entries[2].request_ids == () and decode_all(read_all(r, "nobody")) == []
    for bad in (("a,b",), ("",)):
        with pytest.raises(ValueError, match="inbox entry"):
            InboxEntry("", bad).fields()
