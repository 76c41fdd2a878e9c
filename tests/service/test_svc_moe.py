"""A tiny LLaDA-MoE checkpoint in the official layout served end to end: a CPU worker, the
scheduler over gRPC and the HTTP gateway, its tokens the official sampler's."""

from __future__ import annotations

import httpx
import pytest

from dllmserve.client import Client

PROMPT = [10, 20, 30, 40, 50]
SP = {"gen_length": 16, "steps": 8, "block_length": 8, "temperature": 0.0, "stop_at_eos": False}


@pytest.fixture(scope="module")
def moe_svc(tmp_path_factory):
    from http_util import add_gateway
    from svc_util import Cluster

    from dllmserve.testing.tiny_models import write_tiny_llada_moe

    root = tmp_path_factory.mktemp("moe-svc")
    path = write_tiny_llada_moe(
        root / "tiny-llada-moe", seed=4, n_layers=2, moe_layer_freq=[1, 0], n_kv_heads=2,
        partial_rotary_factor=0.5,
    )  # fmt: skip
    c = Cluster(root / "svc", path)
    try:
        c.add_scheduler()
        c.add_worker("--model-name", "llada-moe-tiny")
        c.base = add_gateway(c)
        yield c
    finally:
        c.close()


def test_grpc_tokens_are_the_official_samplers(moe_svc):
    from tests.plain_moe import PlainMoeModel
    from tests.plain_reference import official_generate

    with Client(moe_svc.target) as cl:
        assert [m.name for m in cl.server_info().models] == ["llada-moe-tiny"]
        done = cl.generate_text(token_ids=PROMPT, sampling_params=SP)
    want = official_generate(PlainMoeModel(moe_svc.model), PROMPT, 16, 8, 8)
    assert list(done.token_ids) == want


def test_http_chat_equals_grpc(moe_svc):
    messages = [{"role": "user", "content": "Hi there"}]
    with Client(moe_svc.target) as cl:
        want = cl.generate_text(messages=messages, sampling_params=SP)
    body = {"model": "llada-moe-tiny", "messages": messages, **SP}
    r = httpx.post(moe_svc.base + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["choices"][0]["message"]["content"] == want.text
    assert got["usage"]["completion_tokens"] == want.usage.generated_tokens == 16
    models = httpx.get(moe_svc.base + "/v1/models", timeout=30).json()
    assert [m["id"] for m in models["data"]] == ["llada-moe-tiny"]
