"""Validate once, carry the result: the worker runs the Admission the scheduler built, read from
the request hash, and block-done travels inside the StepUpdate. Against a real redis-server,
with a real WorkerLoop on the model-free engine."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from svc_util import lua_assign

from dllmserve.broker import redis_keys as rk
from dllmserve.broker.scripts import Broker, StoredRequest
from dllmserve.sampling_params import SamplingParams
from dllmserve.scheduler.relay import ResultHub, follow
from dllmserve.scheduler.validation import validate_request
from dllmserve.sparse.state import SparseConfig
from dllmserve.structured.spec import StructuredOutput
from dllmserve.testing.fake_engine import FakeEngine
from dllmserve.v1 import dllm_pb2 as pb
from dllmserve.worker.config import WorkerConfig
from dllmserve.worker.loop import WorkerLoop


class RecordingEngine(FakeEngine):
    """The fake engine, keeping what each request reached it with."""

    tokenizer = None  # no vocabulary: a structured output goes to add_request at once

    def __init__(self) -> None:
        super().__init__()
        self.got: dict[str, tuple] = {}

    def add_request(self, request_id, prompt, sampling_params, sparse_config=None, **kw):
        self.got[request_id] = (prompt, sampling_params, sparse_config)
        super().add_request(request_id, prompt, sampling_params, sparse_config, **kw)


def _wire() -> pb.GenerateRequest:
    sp = pb.SamplingParams(gen_length=8, steps=4, seed=9, temperature=0.5)
    sp.structured_output.choice.choices.extend(["yes", "no"])
    sc = pb.SparseConfig(retention_ratio=0.25, layer_wise=True, layer_ratios=[0.5, 0.25])
    return pb.GenerateRequest(token_ids=pb.TokenIds(ids=[5, 6, 7]), sampling_params=sp,
                              sparse_config=sc)  # fmt: skip


def _store(r, rid: str, admission, options: pb.StreamOptions | None = None) -> None:
    b = Broker(r)
    opts = (options or pb.StreamOptions()).SerializeToString()
    req = StoredRequest(request_id=rid, admission=admission, model="m", priority=0, deadline=0.0,
                        options=opts, client="ip:c", quota="", last_step=8, ttl_s=60)  # fmt: skip
    b.enqueue(req, max_queue=10)
    assert lua_assign(r, b, "w", {rid}) == [rid]


def test_the_worker_runs_what_the_scheduler_validated(r, monkeypatch):
    adm = validate_request(_wire())  # the scheduler's checks and defaults, once
    assert adm.sampling_params.structured_output == StructuredOutput(choice=("yes", "no"))
    _store(r, "c", adm)
    engine = RecordingEngine()
    loop = WorkerLoop(engine, r, WorkerConfig(async_publish=False), "w")
    loop.ensure_group()

    # From here on, building any of these (a wire conversion, a check run again) fails the test.
    def rebuilt(self) -> None:
        raise AssertionError(f"the worker rebuilt a {type(self).__name__}")

    for cls in (SamplingParams, SparseConfig, StructuredOutput):
        monkeypatch.setattr(cls, "__post_init__", rebuilt)
    monkeypatch.setattr(pb.GenerateRequest, "FromString", rebuilt)
    loop._read_inbox(block_ms=None)
    assert engine.got["c"] == (adm.prompt, adm.sampling_params, adm.sparse_config)
    assert engine.got["c"][2].layer_ratios == (0.5, 0.25)  # the tuple it was, not a list
    assert r.hget(rk.req_key("c"), "status") == rk.RUNNING.encode()


def test_a_request_without_a_readable_admission_fails_alone(r):
    _store(r, "ok", validate_request(pb.GenerateRequest(text="hi")))
    _store(r, "bad", validate_request(pb.GenerateRequest(text="hi")))
    r.hset(rk.req_key("bad"), "admission", b"not json")  # e.g. written by another version
    engine = RecordingEngine()
    loop = WorkerLoop(engine, r, WorkerConfig(async_publish=False), "w")
    loop.ensure_group()
    loop._read_inbox(block_ms=None)
    assert list(engine.got) == ["ok"]
    rec = r.xrange(rk.res_key("bad"))[-1][1]
    assert rec[b"k"] == rk.REC_ERROR.encode() and rec[b"code"] == b"INTERNAL"


def test_block_done_travels_inside_the_step_message(rserver, r):
    """The worker writes the engine's block_done into the StepUpdate (the record has no field
    beside it) and the relay's STREAM_MODE_BLOCKS sends one update, at the block's end."""
    sp = pb.SamplingParams(gen_length=4, steps=4)
    _store(r, "b", validate_request(pb.GenerateRequest(text="hi", sampling_params=sp)))
    engine = RecordingEngine()
    loop = WorkerLoop(engine, r, WorkerConfig(async_publish=False, idle_block_ms=1), "w")
    loop.ensure_group()
    for _ in range(20):
        loop.iterate()
        if r.xrange(rk.res_key("b"))[-1][1][b"k"] == rk.REC_COMPLETED.encode():
            break
    records = [f for _, f in r.xrange(rk.res_key("b"))]
    steps = [pb.StepUpdate.FromString(f[b"p"]) for f in records if f[b"k"] == b"s"]
    assert all(set(f) == {b"a", b"k", b"p"} for f in records if f[b"k"] == b"s")
    assert [(s.step, s.block_done) for s in steps] == [(1, False), (2, False), (3, False),
                                                       (4, True)]  # fmt: skip

    async def relayed() -> list[pb.GenerateEvent]:
        client = aioredis.Redis.from_url(rserver.url)
        hub = ResultHub(client, block_ms=50)
        task = asyncio.create_task(hub.run())
        try:
            opts = pb.StreamOptions(mode=pb.STREAM_MODE_BLOCKS)
            return [ev async for ev in follow(hub, client, "b", opts)]
        finally:
            task.cancel()
            await client.aclose()

    events = asyncio.run(relayed())
    sent = [e.step for e in events if e.WhichOneof("event") == "step"]
    assert [(s.step, s.block_done, list(s.positions)) for s in sent] == [(4, True, [0, 1, 2, 3])]
    assert events[-1].WhichOneof("event") == "completed"
