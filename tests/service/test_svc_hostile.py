"""A hostile client against a real service (scheduler with two tenants + one CPU worker):
every field at its bound and just past it, non-finite floats, oversized lists, garbage bytes,
huge echoed strings, Attach past the end, another tenant's ids. Each answer is the documented
status naming the field, no process logs a traceback, and a normal request finishes after."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import grpc
import pytest
from svc_util import Cluster, bad_request_field, wait_for

from dllmserve.broker import redis_keys as rk
from dllmserve.client import Accepted, Client, Completed, StepUpdate, build_request
from dllmserve.v1 import dllm_pb2 as pb

TENANT_A, TENANT_B = "tenant-a-0123456789", "tenant-b-9876543210"
MAX_REQUEST_BYTES = 512 * 1024
SMALL = {"gen_length": 8, "steps": 4, "seed": 1}
BAD = grpc.StatusCode.INVALID_ARGUMENT


def _sp(**kw) -> dict:
    return {**SMALL, **kw}


# (build_request keyword arguments, the status, the field it names: None = a valid request that
# must complete). Checks that need the model (its length, vocabulary, layers, blocks) run on
# the scheduler against the limits the worker registered (test_svc_model_limits.py).
CASES = [
    ({"sampling_params": _sp(temperature=10.0)}, None, None),
    ({"sampling_params": _sp(temperature=10.0001)}, BAD, "sampling_params.temperature"),
    ({"sampling_params": _sp(temperature=math.inf)}, BAD, "sampling_params.temperature"),
    ({"sampling_params": _sp(temperature=-math.inf)}, BAD, "sampling_params.temperature"),
    ({"sampling_params": _sp(temperature=math.nan)}, BAD, "sampling_params.temperature"),
    ({"sampling_params": _sp(cfg_scale=10.0, temperature=1.0)}, None, None),
    ({"sampling_params": _sp(cfg_scale=10.5)}, BAD, "sampling_params.cfg_scale"),
    ({"sampling_params": _sp(cfg_scale=1e308)}, BAD, "sampling_params.cfg_scale"),
    ({"sampling_params": _sp(cfg_scale=math.nan)}, BAD, "sampling_params.cfg_scale"),
    ({"sampling_params": _sp(threshold=1.0)}, None, None),
    ({"sampling_params": _sp(threshold=1.0000001)}, BAD, "sampling_params.threshold"),
    ({"sampling_params": _sp(threshold=math.nan)}, BAD, "sampling_params.threshold"),
    ({"sampling_params": _sp(top_p=1.0, temperature=0.5)}, None, None),
    ({"sampling_params": _sp(top_p=1.01)}, BAD, "sampling_params.top_p"),
    ({"sampling_params": _sp(top_p=math.inf)}, BAD, "sampling_params.top_p"),
    ({"sampling_params": _sp(top_k=262)}, None, None),  # the tiny model's tokenizer's ids
    ({"sampling_params": _sp(top_k=263)}, BAD, "sampling_params.top_k"),
    ({"sampling_params": _sp(top_k=1_000_001)}, BAD, "sampling_params.top_k"),
    ({"sampling_params": _sp(top_k=2**31 - 1)}, BAD, "sampling_params.top_k"),
    ({"sampling_params": _sp(seed=2**63 - 1)}, None, None),
    ({"sampling_params": _sp(seed=-(2**63))}, BAD, "sampling_params.seed"),
    ({"sampling_params": _sp(steps=8)}, None, None),
    ({"sampling_params": _sp(steps=9)}, BAD, "sampling_params.steps"),
    ({"sampling_params": _sp(block_length=8)}, None, None),
    ({"sampling_params": _sp(block_length=9)}, BAD, "sampling_params.block_length"),
    ({"sampling_params": _sp(block_length=2, steps=3)}, BAD, "sampling_params.steps"),
    ({"sampling_params": _sp(gen_length=8192, steps=8)}, BAD, "sampling_params.gen_length"),
    ({"sampling_params": _sp(gen_length=8193, steps=8)}, BAD, "sampling_params.gen_length"),
    ({"sampling_params": _sp(gen_length=2**31 - 1)}, BAD, "sampling_params.gen_length"),
    ({"sampling_params": _sp(remasking="x" * 300_000)}, BAD, "sampling_params.remasking"),
    ({"sampling_params": _sp(schedule="dream", remasking="origin")}, None, None),
    ({"sampling_params": _sp(schedule="x" * 300_000)}, BAD, "sampling_params.schedule"),
    ({"sampling_params": _sp(alg_temp=10.0, temperature=0.5)}, None, None),
    ({"sampling_params": _sp(alg_temp=10.0001)}, BAD, "sampling_params.alg_temp"),
    ({"sampling_params": _sp(alg_temp=math.nan)}, BAD, "sampling_params.alg_temp"),
    ({"sampling_params": _sp(eps=0.0, schedule="dream")}, None, None),
    ({"sampling_params": _sp(eps=1.0, schedule="dream")}, None, None),
    ({"sampling_params": _sp(eps=-1e-9)}, BAD, "sampling_params.eps"),
    ({"sampling_params": _sp(eps=math.inf)}, BAD, "sampling_params.eps"),
    ({"sparse_config": {"pool_kernel": 63}, "sampling_params": SMALL}, None, None),
    ({"sparse_config": {"pool_kernel": 65}}, BAD, "sparse_config.pool_kernel"),
    ({"sparse_config": {"pool_kernel": 2**31 - 1}}, BAD, "sparse_config.pool_kernel"),
    ({"sparse_config": {"retention_ratio": 1.0}, "sampling_params": SMALL}, None, None),
    ({"sparse_config": {"retention_ratio": 1.0000001}}, BAD, "sparse_config.retention_ratio"),
    ({"sparse_config": {"retention_ratio": math.nan}}, BAD, "sparse_config.retention_ratio"),
    ({"sparse_config": {"layer_wise": True, "layer_ratios": [0.5, 0.7]}, "sampling_params": SMALL},
     None, None),  # the tiny model has 2 layers
    ({"sparse_config": {"layer_wise": True, "layer_ratios": [0.5] * 3}, "sampling_params": SMALL},
     BAD, "sparse_config.layer_ratios"),  # one per layer
    ({"sparse_config": {"layer_wise": True, "layer_ratios": [0.5] * 1025}}, BAD,
     "sparse_config.layer_ratios"),
    ({"sparse_config": {"layer_wise": True, "layer_ratios": [0.5] * 60_000}}, BAD,
     "sparse_config.layer_ratios"),
    ({"sparse_config": {"layer_wise": True, "layer_ratios": [0.5, math.inf]}}, BAD,
     "sparse_config.layer_ratios[1]"),
    ({"sparse_config": {"delay_step": 7, "default_block_len": 8}, "sampling_params": SMALL},
     None, None),
    ({"sparse_config": {"delay_step": 8, "default_block_len": 8}, "sampling_params": SMALL},
     BAD, "sparse_config.delay_step"),  # below the block length
    ({"priority": 100, "sampling_params": SMALL}, None, None),
    ({"priority": -100, "sampling_params": SMALL}, None, None),
    ({"priority": 101}, BAD, "priority"),
    ({"priority": -(2**31)}, BAD, "priority"),
    ({"stream_mode": "every_k_steps", "every_k": 8192, "sampling_params": SMALL}, None, None),
    ({"stream_mode": "every_k_steps", "every_k": 8193}, BAD, "stream_options.every_k"),
    ({"every_k": -1}, BAD, "stream_options.every_k"),
    ({"stream_mode": 2**31 - 1}, BAD, "stream_options.mode"),
    ({"mask_placeholder": "#" * 16, "sampling_params": SMALL}, None, None),
    ({"mask_placeholder": "#" * 100_000}, BAD, "stream_options.mask_placeholder"),
    ({"request_id": "r" * 128, "sampling_params": SMALL}, None, None),
    ({"request_id": "r" * 129}, BAD, "request_id"),
    ({"request_id": "r" * 400_000}, BAD, "request_id"),
    ({"request_id": "ends-with-newline\n"}, BAD, "request_id"),
    ({"request_id": "a/b"}, BAD, "request_id"),
    ({"model": "m" * 257}, BAD, "model"),
    ({"model": "m" * 256}, grpc.StatusCode.NOT_FOUND, None),
    ({"prompt": "p" * 200_001}, BAD, "text"),
    ({"prompt": "p" * 200_000, "sampling_params": SMALL}, BAD, "sampling_params.gen_length"),
    ({"token_ids": [5] * 32_769}, BAD, "token_ids.ids"),
    ({"token_ids": [5] * 32_768, "sampling_params": SMALL}, BAD, "sampling_params.gen_length"),
    ({"token_ids": [5, 2**31 - 1], "sampling_params": SMALL}, BAD, "prompt"),  # vocabulary
    ({"messages": [{"role": "user", "content": "hi"}] * 257}, BAD, "messages.messages"),
    ({"messages": [{"role": "u" * 100_000, "content": "x"}]}, BAD, "messages.messages[0].role"),
    ({"prompt": "q" * 600_000}, grpc.StatusCode.RESOURCE_EXHAUSTED, None),  # > max request
]  # fmt: skip


@pytest.fixture(scope="module")
def svc(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("hostile")
    c = Cluster(root, tiny_model)
    tokens = root / "tokens.txt"
    tokens.write_text(f"# one token per tenant\n{TENANT_A}\n\n{TENANT_B}\n")
    try:
        c.port = c.add_scheduler(
            "--auth-token-file", str(tokens), "--max-request-bytes", str(MAX_REQUEST_BYTES),
            "--cancel-wait", "30",
        )  # fmt: skip
        c.add_worker()
        yield c
    finally:
        c.close()


def _request(kw: dict) -> pb.GenerateRequest:
    kw = dict(kw)
    prompt = kw.pop("prompt", "hello") if "token_ids" not in kw and "messages" not in kw else None
    return build_request(prompt, **kw)


def _no_tracebacks(c: Cluster) -> None:
    for p in [*c.workers, *(s for s, _ in c.schedulers)]:
        assert "Traceback" not in Path(p.log_path).read_text(errors="replace"), p.log_path


def test_every_field_at_its_bound_and_past_it(svc, tiny_model):
    import json

    mask_id = json.loads((tiny_model / "config.json").read_text())["mask_token_id"]
    with Client(f"127.0.0.1:{svc.port}", token=TENANT_A) as c:
        for kw, code, field in CASES:
            req = _request(kw)
            if code is None:
                events = list(c.stream(req, timeout=120, reattach=False))
                done = events[-1]
                assert done.token_ids and mask_id not in done.token_ids, kw
                continue
            with pytest.raises(grpc.RpcError) as e:
                list(c.stream(req, timeout=120, reattach=False))
            assert e.value.code() == code, (kw, e.value.details()[:200])
            assert len(e.value.details()) < 400, "an echoed value must be cut short"
            if field is not None:
                assert e.value.details().startswith(field + ":"), e.value.details()[:200]
                assert bad_request_field(e.value) == field
        # the service is unharmed: a normal request finishes right after
        done = c.generate_text("still fine", sampling_params=SMALL, timeout=120)
        assert len(done.token_ids) == 8
    _no_tracebacks(svc)


def _raw(port: int, method: str, body: bytes, token: str = TENANT_A):
    """Send `body` as is (no serializer) to a DllmService method; return the status code."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        path = f"/dllmserve.v1.DllmService/{method}"
        md = (("authorization", f"Bearer {token}"),)
        try:
            if method in ("Generate", "Attach"):
                list(ch.unary_stream(path)(body, timeout=60, metadata=md))
            else:
                ch.unary_unary(path)(body, timeout=60, metadata=md)
        except grpc.RpcError as e:
            return e.code(), e.details()
    return grpc.StatusCode.OK, ""


GARBAGE = [
    b"\xff\xff\xff\xff",  # not a protobuf at all
    b"\x12\x05ab",  # a length past the end
    bytes([0x12, 2, 0xFF, 0xFE]),  # text: invalid UTF-8
    bytes([0x10, 5]),  # text (a string) sent as a varint
    bytes([0x32, 9, 0x19]) + bytes(8),  # sampling_params.steps (an int32) as a fixed64
    bytes([0x4D, 0, 0, 0, 0]),  # priority (a varint) as a fixed32
    b"\x0a" + b"\xff" * 11,  # a length varint that never ends
]


@pytest.mark.parametrize("method", ["Generate", "Attach", "Cancel"])
def test_garbage_bytes_are_invalid_argument_without_a_traceback(svc, method):
    for body in GARBAGE:
        code, details = _raw(svc.port, method, body)
        assert code == BAD, (method, body, code, details)
    _no_tracebacks(svc)


def test_attach_past_the_end_and_bad_ids(svc):
    with Client(f"127.0.0.1:{svc.port}", token=TENANT_A) as c:
        done = c.generate_text("attach me", request_id="att-1", sampling_params=SMALL)
        assert done.usage.steps == 4
        for after_step, attempt, code in [
            (5, 1, grpc.StatusCode.OUT_OF_RANGE),  # 4 steps planned: step 5 never comes
            (2**31 - 1, 0, grpc.StatusCode.OUT_OF_RANGE),
            (0, 2, grpc.StatusCode.OUT_OF_RANGE),  # attempt 2 does not exist
            (-1, 0, BAD),
        ]:
            with pytest.raises(grpc.RpcError) as e:
                list(c.attach("att-1", after_step, attempt, timeout=30))
            assert e.value.code() == code, (after_step, attempt, e.value.details())
        # at the last step itself: only the Completed is left
        events = list(c.attach("att-1", 4, 1, timeout=30))
        assert [type(e) for e in events] == [Accepted, Completed]
        for rid in ("att-1\n", "x" * 129, ""):
            with pytest.raises(grpc.RpcError) as e:
                list(c.attach(rid, timeout=30))
            assert e.value.code() == BAD and bad_request_field(e.value) == "request_id"
            with pytest.raises(grpc.RpcError) as e:
                c.cancel(rid)
            assert e.value.code() == BAD and bad_request_field(e.value) == "request_id"


LONG = {"gen_length": 256, "steps": 256, "block_length": 32, "seed": 3, "stop_at_eos": False}


def test_tenants_cannot_see_or_cancel_each_others_requests(svc):
    target = f"127.0.0.1:{svc.port}"
    events: list = []

    def run_a():
        with Client(target, token=TENANT_A) as a:
            events.extend(a.generate("tenant a", request_id="mine-a", sampling_params=LONG,
                                     timeout=300))  # fmt: skip

    t = threading.Thread(target=run_a, daemon=True)
    t.start()
    wait_for(lambda: any(isinstance(e, StepUpdate) for e in events), what="a running")
    with Client(target, token=TENANT_B) as b:
        for call in (
            lambda: list(b.attach("mine-a", timeout=30)),
            lambda: b.cancel("mine-a"),
            lambda: list(
                b.generate(
                    "tenant a",
                    request_id="mine-a",
                    sampling_params=LONG,
                    timeout=30,
                    reattach=False,
                )
            ),  # fmt: skip
        ):
            with pytest.raises(grpc.RpcError) as e:
                call()
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
            assert "mine-a" in e.value.details()
        # B's own request with the same prompt is unaffected by A's
        assert len(b.generate_text("b", sampling_params=SMALL).token_ids) == 8
    t.join(300)
    done = events[-1]
    assert len(done.token_ids) == 256 and done.attempt == 1
    h = svc.client.hgetall(rk.req_key("mine-a"))
    assert h[b"status"] == b"done"
    assert all(TENANT_A.encode() not in v for v in h.values()), "only a hash is stored"
    with Client(target, token=TENANT_A) as a:  # the owner still sees it
        assert list(a.attach("mine-a", 256, 1, timeout=30))[-1].text == done.text


def test_cancel_of_a_running_request_is_confirmed(svc):
    target = f"127.0.0.1:{svc.port}"
    events: list = []
    errors: list = []

    def run():
        try:
            with Client(target, token=TENANT_A) as a:
                for ev in a.generate("cancel me", request_id="cx-1", sampling_params=LONG,
                                     timeout=300):  # fmt: skip
                    events.append(ev)
        except grpc.RpcError as e:
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    wait_for(lambda: any(isinstance(e, StepUpdate) for e in events), what="running")
    with Client(target, token=TENANT_A) as a:
        assert a.cancel("cx-1", timeout=60) == "cancelled"  # the worker has confirmed
    assert svc.req("cx-1")["status"] == rk.CANCELLED
    t.join(60)
    assert errors and errors[0].code() == grpc.StatusCode.CANCELLED
