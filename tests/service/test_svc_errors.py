"""Bad input over real gRPC: every invalid field -> INVALID_ARGUMENT naming it (with a
google.rpc.BadRequest detail), oversized messages, unknown model, a full queue, auth, TLS; and
the client's typed errors for each (ValidationError, NotFound, Overloaded, Unavailable)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from dllmserve import client as dc
from dllmserve.broker import redis_keys as rk
from dllmserve.client import Client, build_request
from dllmserve.errors import ValidationError
from dllmserve.scheduler.validation import validate_request
from dllmserve.v1 import dllm_pb2 as pb

TOKEN = "s3cret-token"

# (build_request keyword arguments, the field the error must name)
BAD = [
    ({"prompt": ""}, "text"),
    ({"prompt": None}, "prompt"),
    ({"token_ids": []}, "token_ids.ids"),
    ({"token_ids": [5, -1]}, "token_ids.ids[1]"),
    ({"messages": []}, "messages.messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages.messages[0].role"),
    ({"request_id": "bad id!"}, "request_id"),
    ({"request_id": "x" * 129}, "request_id"),
    ({"priority": 1000}, "priority"),
    ({"sampling_params": {"gen_length": 0}}, "sampling_params.gen_length"),
    ({"sampling_params": {"gen_length": 100_000}}, "sampling_params.gen_length"),
    ({"sampling_params": {"gen_length": 16, "steps": 0}}, "sampling_params.steps"),
    ({"sampling_params": {"gen_length": 16, "steps": 32}}, "sampling_params.steps"),
    ({"sampling_params": {"gen_length": 16, "steps": 8, "block_length": 0}},
     "sampling_params.block_length"),
    ({"sampling_params": {"gen_length": 16, "steps": 8, "block_length": 32}},
     "sampling_params.block_length"),
    ({"sampling_params": {"temperature": -1.0}}, "sampling_params.temperature"),
    ({"sampling_params": {"temperature": float("nan")}}, "sampling_params.temperature"),
    ({"sampling_params": {"cfg_scale": -0.5}}, "sampling_params.cfg_scale"),
    ({"sampling_params": {"remasking": "sideways"}}, "sampling_params.remasking"),
    ({"sampling_params": {"threshold": 1.5}}, "sampling_params.threshold"),
    ({"sampling_params": {"top_p": 0.0}}, "sampling_params.top_p"),
    ({"sampling_params": {"top_k": 0}}, "sampling_params.top_k"),
    ({"sampling_params": {"seed": -3}}, "sampling_params.seed"),
    ({"sampling_params": {"schedule": "llada"}}, "sampling_params.schedule"),
    ({"sampling_params": {"alg_temp": -0.5}}, "sampling_params.alg_temp"),
    ({"sampling_params": {"alg_temp": 0.5, "threshold": 0.9}}, "sampling_params.alg_temp"),
    ({"sampling_params": {"eps": 1.5}}, "sampling_params.eps"),
    ({"sparse_config": {"retention_ratio": 0.0}}, "sparse_config.retention_ratio"),
    ({"sparse_config": {"retention_ratio": 1.5}}, "sparse_config.retention_ratio"),
    ({"sparse_config": {"delay_step": -1}}, "sparse_config.delay_step"),
    ({"sparse_config": {"default_block_len": 0}}, "sparse_config.default_block_len"),
    ({"sparse_config": {"pool_kernel": 4}}, "sparse_config.pool_kernel"),
    ({"sparse_config": {"layer_ratios": [0.5, 0.5]}}, "sparse_config.layer_ratios"),
    ({"sparse_config": {"layer_wise": True, "layer_ratios": [0.5, 2.0]}},
     "sparse_config.layer_ratios[1]"),
    ({"stream_mode": "every_k_steps"}, "stream_options.every_k"),
    ({"every_k": -2}, "stream_options.every_k"),
    ({"stream_mode": 9}, "stream_options.mode"),
    ({"mask_placeholder": "#" * 17}, "stream_options.mask_placeholder"),
]  # fmt: skip


def _request(kw: dict) -> pb.GenerateRequest:
    kw = dict(kw)
    prompt = kw.pop("prompt", "hello") if "token_ids" not in kw and "messages" not in kw else None
    return build_request(prompt, **kw)


@pytest.mark.parametrize("kw,field", BAD, ids=[f for _, f in BAD])
def test_validation_names_the_field(kw, field):
    with pytest.raises(ValidationError) as e:
        validate_request(_request(kw))
    assert e.value.field == field


@pytest.fixture(scope="module")
def svc(tmp_path_factory, tiny_model):
    """Two schedulers on one Redis and no worker: one with auth, one with a tiny queue."""
    from svc_util import Cluster

    c = Cluster(tmp_path_factory.mktemp("errors"), tiny_model)
    try:
        # the requests queued here wait without a worker as long as the tests need
        c.auth_port = c.add_scheduler("--auth-token", TOKEN, "--worker-wait", "600")
        c.open_port = c.add_scheduler("--max-queue", "2", "--max-message-bytes", "65536",
                                      "--worker-wait", "600")  # fmt: skip
        yield c
    finally:
        c.close()


def _details(err: dc.ServiceError):
    """The google.rpc details (what a client in another language reads), through the typed
    error as grpc_status reads a gRPC call's."""
    st = rpc_status.from_call(err)
    out = {}
    for d in st.details if st else []:
        for cls in (error_details_pb2.BadRequest, error_details_pb2.RetryInfo):
            if d.Is(cls.DESCRIPTOR):
                m = cls()
                d.Unpack(m)
                out[cls.__name__] = m
    return out


def _call(port: int, req: pb.GenerateRequest, token: str | None = None):
    with Client(f"127.0.0.1:{port}", token=token) as c:
        return list(c.stream(req, timeout=30, reattach=False))


def test_every_invalid_field_is_invalid_argument_over_grpc(svc):
    for kw, field in BAD:
        with pytest.raises(dc.ValidationError) as e:
            _call(svc.open_port, _request(kw))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert e.value.field == field and isinstance(e.value, ValidationError)
        assert e.value.details().startswith(field + ":"), (field, e.value.details())
        (violation,) = _details(e.value)["BadRequest"].field_violations
        assert violation.field == field and violation.description
    assert svc.client.xlen(rk.PENDING) == 0, "an invalid request must never be queued"


def test_oversized_message_and_unknown_model(svc):
    with pytest.raises(dc.Overloaded) as e:
        _call(svc.open_port, build_request("x" * 100_000))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert e.value.retry_after is None  # too large: retrying would not help
    with pytest.raises(dc.NotFound) as e:
        _call(svc.open_port, build_request("hi", model="no-such-model"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-model" in e.value.details()


def test_queue_full_is_resource_exhausted_with_a_retry_hint(svc):
    # No worker: two requests wait in the queue, the third is refused.
    waiting = [
        threading.Thread(target=_drain_quietly, args=(svc.open_port, f"q{i}"), daemon=True)
        for i in range(2)
    ]
    for t in waiting:
        t.start()
    from svc_util import wait_for

    wait_for(lambda: svc.client.xlen(rk.PENDING) == 2, what="two queued")
    with pytest.raises(dc.Overloaded) as e:
        _call(svc.open_port, build_request("one too many", request_id="q-full"))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _details(e.value)["RetryInfo"].retry_delay.seconds >= 1
    assert e.value.retry_after >= 1
    assert not svc.client.exists(rk.req_key("q-full"))
    # The queued ones are untouched; cancelling them frees the queue.
    with Client(f"127.0.0.1:{svc.open_port}") as c:
        assert [c.cancel(f"q{i}") for i in range(2)] == ["cancelled", "cancelled"]
    for t in waiting:
        t.join(30)


def _drain_quietly(port: int, rid: str) -> None:
    try:
        _call(port, build_request("wait", request_id=rid))
    except grpc.RpcError:
        pass


def test_auth(svc):
    target = f"127.0.0.1:{svc.auth_port}"
    for token in (None, "wrong-token"):
        with Client(target, token=token) as c:
            with pytest.raises(grpc.RpcError) as e:
                c.server_info()
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as e:
                list(c.generate("hi", reattach=False))
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with Client(target, token=TOKEN) as c:
        assert c.server_info().max_queue > 0
        with pytest.raises(grpc.RpcError) as e:  # authenticated: now validation answers
            list(c.generate("", reattach=False))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Health stays open for probes that send no token (NOT_SERVING: no worker is ready here).
    with grpc.insecure_channel(target) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a cert")
def test_tls(svc, tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    port = svc.add_scheduler("--tls-cert", str(cert), "--tls-key", str(key), "--no-dispatch")
    with Client(f"localhost:{port}", tls=True, root_certificates=cert.read_bytes()) as c:
        assert c.server_info().version
    with Client(f"localhost:{port}") as c:  # plaintext to a TLS port fails
        with pytest.raises(dc.Unavailable) as e:
            c.server_info(timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_async_client_raises_the_same_typed_errors(svc):
    from dllmserve.scheduler.local_redis import free_port

    async def go() -> None:
        async with dc.AsyncClient(f"127.0.0.1:{svc.open_port}") as c:
            with pytest.raises(dc.ValidationError) as e:
                async for _ in c.generate("hi", sampling_params={"steps": 0}, reattach=False):
                    pass
            assert e.value.field == "sampling_params.steps"
            with pytest.raises(dc.NotFound):
                await c.cancel("no-such-request")
        async with dc.AsyncClient(f"127.0.0.1:{free_port()}") as c:  # nothing listens there
            with pytest.raises(dc.Unavailable):
                await c.server_info(timeout=5)

    asyncio.run(go())
