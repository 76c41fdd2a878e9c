"""End to end: real scheduler + two CPU workers + real Redis, over gRPC on loopback."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from svc_util import wait_for

from dllmserve.broker import redis_keys as rk
from dllmserve.client import (
    Accepted,
    AsyncClient,
    Canvas,
    Client,
    Completed,
    Event,
    FinishReason,
    StepUpdate,
)

SP = {"gen_length": 16, "steps": 8, "seed": 3}
SPARSE_SP = {"gen_length": 16, "steps": 8, "block_length": 8, "seed": 5, "stop_at_eos": False}
# Long enough (hundreds of steps) to still be running when the test acts on it.
LONG_SPARSE = {"gen_length": 256, "steps": 256, "block_length": 32, "stop_at_eos": False}
LONGER = {"gen_length": 480, "steps": 480, "block_length": 32, "stop_at_eos": False}


def events(client: Client, prompt: str = "Hello there", **kw) -> list[Event]:
    return list(client.generate(prompt, **kw))


def split(evs):
    acc = [e for e in evs if isinstance(e, Accepted)]
    steps = [e for e in evs if isinstance(e, StepUpdate)]
    done = [e for e in evs if isinstance(e, Completed)]
    return acc, steps, done


def check_stream(steps, done, gen_length):
    """Applying the committed tokens in order gives the final tokens; text deltas the text."""
    canvas = Canvas()
    seen: set[int] = set()
    for s in steps:
        assert not (set(s.positions) & seen), "a position was committed twice"
        seen |= set(s.positions)
        canvas.apply(s)
    assert canvas.token_ids(gen_length) == list(done.token_ids)
    assert canvas.text == done.text
    assert len(done.token_ids) == gen_length


@pytest.fixture
def client(cluster):
    with Client(cluster.target) as c:
        yield c


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_every_step_stream_rebuilds_the_final_tokens(client, sparse):
    kw = {"sampling_params": SPARSE_SP, "sparse_config": {"delay_step": 1}} if sparse else {}
    evs = events(client, include_canvas=True, **({"sampling_params": SP} | kw))
    acc, steps, (done,) = split(evs)
    assert isinstance(evs[0], Accepted) and acc[0].request_id
    assert [s.step for s in steps] == list(range(1, len(steps) + 1))
    assert steps[-1].masked_left == 0 and done.usage.steps == steps[-1].step
    assert all(s.attempt == 1 for s in steps) and done.attempt == 1
    assert "_" not in steps[-1].canvas and "_" in steps[0].canvas
    check_stream(steps, done, 16)
    assert done.usage.prompt_tokens > 0 and done.usage.forward_passes >= done.usage.steps
    assert done.timings.total_ms >= done.timings.first_update_ms >= done.timings.queued_ms >= 0
    assert done.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)


def test_stream_modes_merge_steps_without_losing_any(client):
    base = events(client, "modes", sampling_params=SPARSE_SP, sparse_config={})
    _, base_steps, (base_done,) = split(base)
    n = len(base_steps)
    for mode, kw in [
        ("every_k_steps", {"every_k": 3}),
        ("blocks", {}),
        ("final_only", {}),
    ]:
        evs = events(client, "modes", sampling_params=SPARSE_SP, sparse_config={},
                     stream_mode=mode, **kw)  # fmt: skip
        _, steps, (done,) = split(evs)
        assert list(done.token_ids) == list(base_done.token_ids), mode
        if mode == "final_only":
            assert steps == []
            continue
        check_stream(steps, done, 16)
        if mode == "every_k_steps":
            assert [s.step for s in steps] == sorted({*range(3, n + 1, 3), n})
        else:  # one update per block of 8: blocks end at steps 4 and 8 (4 steps per block)
            assert [s.step for s in steps] == [n // 2, n]
            assert [s.block_index for s in steps] == [0, 1]
            assert sorted(steps[0].positions) == list(range(8))


def test_prompt_kinds_and_idempotent_request_id(client, cluster):
    done_chat = client.generate_text(
        messages=[{"role": "user", "content": "Hi"}], sampling_params=SP, request_id="chat-1"
    )
    assert done_chat.request_id == "chat-1"
    done_ids = client.generate_text(token_ids=[72, 105, 33], sampling_params=SP)
    assert done_ids.usage.prompt_tokens == 3
    # The same id and request again: no second run, the stream follows the first one.
    evs = events(client, messages=[{"role": "user", "content": "Hi"}], sampling_params=SP,
                 request_id="chat-1")  # fmt: skip
    acc, steps, (done,) = split(evs)
    assert acc[0].duplicate and acc[0].status == rk.DONE
    assert list(done.token_ids) == list(done_chat.token_ids)
    check_stream(steps, done, 16)
    # The same id with a different request is refused.
    with pytest.raises(grpc.RpcError) as e:
        events(client, "other", sampling_params=SP, request_id="chat-1")
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_attach_after_disconnect_resumes_without_gap_or_duplicate(client, cluster):
    it = client.generate("attach me", request_id="att-1", sampling_params=LONG_SPARSE,
                         sparse_config={}, reattach=False)  # fmt: skip
    first = []
    for ev in it:
        first.append(ev)
        if len(first) == 4:  # Accepted + three steps
            break
    it.close()  # the client goes away; the request keeps running (grace period)
    _, steps1, _ = split(first)
    last = steps1[-1]
    rest = list(client.attach("att-1", after_step=last.step, attempt=last.attempt))
    acc, steps2, (done,) = split(rest)
    assert acc and acc[0].request_id == "att-1"
    assert [s.step for s in steps1 + steps2] == list(range(1, done.usage.steps + 1))
    check_stream(steps1 + steps2, done, 256)
    # Attaching to a finished request replays it; after its last step only Completed is left.
    replay = split(list(client.attach("att-1")))
    assert [s.step for s in replay[1]] == [s.step for s in steps1 + steps2]
    tail = split(list(client.attach("att-1", after_step=done.usage.steps, attempt=1)))
    assert tail[1] == [] and tail[2][0].token_ids == done.token_ids


def test_cancel_frees_the_worker_memory(client, cluster):
    it = client.generate("cancel me", request_id="can-1", sampling_params=LONG_SPARSE,
                         sparse_config={}, reattach=False)  # fmt: skip
    got = []
    with pytest.raises(grpc.RpcError) as e:
        for ev in it:
            got.append(ev)
            if len(got) == 2:  # Accepted + the first step: it runs on a worker
                wid = cluster.req("can-1")["worker"]
                assert client.cancel("can-1") in ("cancelling", "cancelled")
    assert e.value.code() == grpc.StatusCode.CANCELLED
    assert not split(got)[2], "a cancelled request must not complete"
    assert cluster.req("can-1")["status"] == rk.CANCELLED
    # The worker aborted it: it runs nothing and all its cache pages are free again.
    wait_for(
        lambda: (
            (h := cluster.worker_hash(wid))
            and h["running"] == "0"
            and h["free_pages"] == h["total_pages"]
        ),
        what="pages freed",
    )
    assert client.cancel("can-1") == rk.CANCELLED  # cancelling again changes nothing
    with pytest.raises(grpc.RpcError) as e:
        client.cancel("no-such-request")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_deadline_ends_the_request_on_the_worker(client, cluster):
    with pytest.raises(grpc.RpcError) as e:
        for _ev in client.generate("deadline", request_id="dl-1", sampling_params=LONGER,
                                  sparse_config={}, timeout=1.0):  # fmt: skip
            pass
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for(lambda: cluster.req("dl-1").get("status") == rk.EXPIRED, what="expired")


def test_cancel_on_disconnect(client, cluster):
    it = client.generate("bye", request_id="cod-1", sampling_params=LONG_SPARSE,
                         sparse_config={}, cancel_on_disconnect=True, reattach=False)  # fmt: skip
    for i, _ev in enumerate(it):
        if i == 2:
            break
    it.close()
    wait_for(lambda: cluster.req("cod-1").get("status") == rk.CANCELLED, what="cancelled")


def test_server_info_health_and_reflection(client, cluster):
    info = client.server_info()
    assert len(info.workers) == 2 and all(w.state == "ready" for w in info.workers)
    assert [m.name for m in info.models] == [cluster.model.name]
    assert info.models[0].workers == 2 and info.version and info.dispatcher_leader
    assert info.free_slots > 0 and info.max_queue > 0
    ch = grpc.insecure_channel(cluster.target)
    health = health_pb2_grpc.HealthStub(ch)
    for service in ("", "dllmserve.v1.DllmService"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(ch)
    reply = next(
        refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    )
    names = {s.name for s in reply.list_services_response.service}
    assert {"dllmserve.v1.DllmService", "grpc.health.v1.Health"} <= names
    ch.close()


def test_async_client_runs_concurrent_streams(cluster):
    async def main():
        async with AsyncClient(cluster.target) as c:

            async def one(i):
                evs = [ev async for ev in c.generate(f"async {i}", sampling_params=SP)]
                return split(evs)

            results = await asyncio.gather(*(one(i) for i in range(6)))
            assert (await c.server_info()).workers
            return results

    for _, steps, (done,) in asyncio.run(main()):
        check_stream(steps, done, 16)


def test_engine_side_validation_reaches_the_client(client):
    # Checks that need the model (vocabulary, context length, steps per block) run on the
    # worker; the error still names the field and other requests are not disturbed.
    cases = [
        ({"token_ids": [10**6]}, "prompt"),
        ({"sampling_params": {"gen_length": 16, "steps": 1, "block_length": 4}},
         "sampling_params.steps"),
        ({"sampling_params": {"gen_length": 512, "steps": 8}}, "sampling_params.gen_length"),
        ({"sparse_config": {"delay_step": 20}, "sampling_params": SPARSE_SP},
         "sparse_config.delay_step"),
    ]  # fmt: skip
    good: list = []
    t = threading.Thread(target=lambda: good.append(client.generate_text("ok", sampling_params=SP)))
    t.start()
    for kw, field in cases:
        kw = {"sampling_params": SP} | kw
        prompt = None if "token_ids" in kw else "x"
        with pytest.raises(grpc.RpcError) as e:
            events(client, prompt, **kw)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert e.value.details().startswith(field), (field, e.value.details())
    t.join(120)
    assert good and len(good[0].token_ids) == 16


def test_orphaned_request_is_cancelled_after_the_grace_period(cluster):
    # A relay-only replica with a short grace period. (gRPC tells a server about a client that
    # left when the server next writes to it, so the request is running when that happens.)
    port = cluster.add_scheduler("--orphan-grace", "1", "--no-dispatch")
    dense_long = {"gen_length": 480, "steps": 480, "stop_at_eos": False}
    with Client(f"127.0.0.1:{port}") as c:
        it = c.generate("orphan", request_id="orph-1", sampling_params=dense_long, reattach=False)
        assert [type(next(it)) for _ in range(2)] == [Accepted, StepUpdate]
        it.close()  # the client goes away and never comes back
        wait_for(lambda: cluster.req("orph-1").get("status") == rk.CANCELLED, what="cancelled")
        it = c.generate("orphan", request_id="orph-2", sampling_params=dense_long, reattach=False)
        assert [type(next(it)) for _ in range(2)] == [Accepted, StepUpdate]
        it.close()
        att = c.attach("orph-2")  # back within the grace period: the request is kept
        assert next(att).status == rk.RUNNING
        steps = [next(att) for _ in range(3)]
        time.sleep(1.5)  # the first stream's grace period runs out while the second follows
        assert cluster.req("orph-2")["status"] == rk.RUNNING, steps
        att.close()
        wait_for(lambda: cluster.req("orph-2").get("status") == rk.CANCELLED, what="cancelled")
