"""What the operator sets reaches every record, bad ids are refused by the tokenizer's bounds,
refusals are logged with their request id, and the per-client cap follows the user a gateway
names: real scheduler and worker processes on the demo model, real Redis."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from svc_util import SHORT, Cluster, bad_request_field, wait_for

import dllmserve
from dllmserve.broker import redis_keys as rk
from dllmserve.client import Client, build_request
from dllmserve.scheduler.auth import CLIENT_HEADER
from dllmserve.v1 import dllm_pb2_grpc

DEMO = Path(dllmserve.__file__).parent / "assets" / "tiny-llada"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo model (262 token ids, 320 embedding rows) behind a scheduler told
    --result-ttl 30."""
    c = Cluster(tmp_path_factory.mktemp("operator"), DEMO)
    try:
        c.add_scheduler("--result-ttl", "30")
        c.add_worker()
        yield c
    finally:
        c.close()


def _log(p) -> str:
    return Path(p.log_path).read_text(errors="replace")


def test_the_schedulers_result_ttl_governs_the_records_workers_write(demo):
    with Client(demo.target) as cl:
        done = cl.generate_text("ttl", request_id="ttl-1", sampling_params=SHORT, timeout=120)
    assert done.finish_reason
    for key in (rk.req_key("ttl-1"), rk.res_key("ttl-1")):  # written last by the worker
        assert 0 < demo.client.ttl(key) <= 30, (key, demo.client.ttl(key))


def test_a_token_id_past_the_tokenizer_is_refused_and_logged_with_its_id(demo):
    req = build_request(token_ids=[5, 300], request_id="oov-1", sampling_params=SHORT)
    with Client(demo.target) as cl, pytest.raises(grpc.RpcError) as e:
        list(cl.stream(req, timeout=60, reattach=False))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_field(e.value) == "prompt"
    assert "token id 300 is outside [0, 261]" in e.value.details()
    assert not demo.client.exists(rk.req_key("oov-1"))
    line = wait_for(
        lambda: [x for x in _log(demo.schedulers[0][0]).splitlines() if "request_id=oov-1" in x],
        what="the refusal logged",
    )[0]
    assert "refused" in line and "code=INVALID_ARGUMENT" in line and "outside [0, 261]" in line


def _open(target: str, rid: str, header: str | None, token: str | None = None):
    """A Generate call left open (no worker: it waits queued); its first event or error."""
    md = [(CLIENT_HEADER, header)] if header else []
    if token:
        md.append(("authorization", f"Bearer {token}"))
    ch = grpc.insecure_channel(target)
    call = dllm_pb2_grpc.DllmServiceStub(ch).Generate(
        build_request("wait", request_id=rid, sampling_params=SHORT), metadata=md, timeout=120
    )
    try:
        next(call)
        return call, None
    except grpc.RpcError as e:
        return call, e.code()


def test_the_per_client_cap_follows_a_trusted_client_header(make_cluster):
    c = make_cluster()
    cap = ("--max-queue-per-client", "1", "--worker-wait", "600")
    plain = f"127.0.0.1:{c.add_scheduler(*cap)}"
    trusting = f"127.0.0.1:{c.add_scheduler(*cap, '--trust-client-header')}"
    authed = f"127.0.0.1:{c.add_scheduler(*cap, '--auth-token', 'tok')}"
    calls = []

    def code(target, rid, header, token=None):
        call, err = _open(target, rid, header, token)
        calls.append(call)
        return err

    # untrusted: the header is ignored, two users of one address share one bucket (as before)
    assert code(plain, "a1", "alice") is None
    assert code(plain, "b1", "bob") == grpc.StatusCode.RESOURCE_EXHAUSTED
    # trusted: each user has a bucket of their own; no header is the caller's bucket (full)
    assert code(trusting, "b2", "bob") is None
    assert code(trusting, "b3", "bob") == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert code(trusting, "c1", "carol") is None
    assert code(trusting, "n1", None) == grpc.StatusCode.RESOURCE_EXHAUSTED
    # with auth on, an authenticated caller's header splits its tenant's bucket
    assert code(authed, "t1", "alice", "tok") is None
    assert code(authed, "t2", "bob", "tok") is None
    assert code(authed, "t3", "alice", "tok") == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert c.client.hlen(rk.QUEUED_BY_CLIENT) == 5  # the address; bob, carol; alice, bob
    assert c.client.xlen(rk.PENDING) == 5
    for call in calls:
        call.cancel()
    # A Redis error is a refusal like any other: logged with the request id and the cause.
    c.client.close()
    c.redis.stop(kill=True)
    assert code(plain, "down-1", None) == grpc.StatusCode.UNAVAILABLE
    logs = "".join(_log(p) for p, _ in c.schedulers)
    (line,) = [x for x in logs.splitlines() if "request_id=down-1" in x]
    assert "refused" in line and "code=UNAVAILABLE" in line and "redis unavailable" in line
