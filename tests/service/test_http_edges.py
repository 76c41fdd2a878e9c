"""The HTTP API's edges through real processes (a gateway, a scheduler and a CPU worker on the
shipped tiny model): request ids and the access log, a non-streaming client that leaves, the
OpenAI SDK's model retrieval, JSON 404/405, usage after a stop string, metric labels, CORS,
hostile JSON, and the default block length of a streamed request."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest
from http_util import add_gateway, scrape, total
from svc_util import Cluster, wait_for

from dllmserve.assets import default_model_path
from dllmserve.broker import redis_keys as rk
from dllmserve.gateway.requests import plan

PROMPT = "Repeat exactly: serving diffusion models"
MESSAGES = [{"role": "user", "content": PROMPT}]
ORIGIN = "http://playground.example"


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("edges"), default_model_path())
    try:
        c.add_scheduler()
        c.add_worker()
        c.base = add_gateway(c)
        c.cors = add_gateway(c, "--allowed-origins", ORIGIN)
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def oai(svc):
    return openai.OpenAI(base_url=svc.base + "/v1", api_key="unused", max_retries=0)


def access_lines(svc, rid: str) -> list[str]:
    text = Path(svc.gateways[0].log_path).read_text(errors="replace")
    return [x for x in text.splitlines() if "http_request" in x and f"request_id={rid}" in x]


def test_the_callers_request_id_is_used_echoed_and_logged(svc):
    body = {"model": "", "prompt": PROMPT, "max_tokens": 16, "steps": 8}
    r = httpx.post(svc.base + "/v1/completions", json=body, headers={"X-Request-Id": "job:7.a-1"},
                   timeout=120)  # fmt: skip
    assert r.status_code == 200 and r.headers["x-request-id"] == "job:7.a-1"
    assert r.json()["id"] == "cmpl-job:7.a-1"
    assert svc.req("job:7.a-1")["status"] == rk.DONE  # the scheduler ran it under that id
    (line,) = wait_for(lambda: access_lines(svc, "job:7.a-1"), what="access line")
    assert "client=127.0.0.1:" in line and "status=200" in line
    # Two choices run as <id>-0 and <id>-1.
    r = httpx.post(svc.base + "/v1/completions", json=body | {"n": 2},
                   headers={"X-Request-Id": "pair"}, timeout=120)  # fmt: skip
    assert r.status_code == 200
    assert svc.req("pair-0")["status"] == svc.req("pair-1")["status"] == rk.DONE
    # A fresh id when none is sent, on every route.
    assert len(httpx.get(svc.base + "/health").headers["x-request-id"]) == 32


@pytest.mark.parametrize("rid", ["", "a b", "x" * 129, "naïve", "semi;colon"])
def test_a_bad_request_id_is_a_400_naming_the_header(svc, rid):
    r = httpx.post(svc.base + "/v1/completions", json={"prompt": PROMPT},
                   headers={"X-Request-Id": rid.encode()})  # fmt: skip
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "X-Request-Id" and err["message"].startswith("X-Request-Id:")
    assert r.headers["x-request-id"] != rid  # never echoed back


def test_a_request_id_too_long_for_its_choices_is_a_400(svc):
    """n = 2 runs as <id>-0 and <id>-1, which must stay within the scheduler's 128 characters."""
    r = httpx.post(svc.base + "/v1/completions", json={"prompt": PROMPT, "n": 2},
                   headers={"X-Request-Id": "x" * 126})  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["param"] == "X-Request-Id"


def test_an_error_reason_reaches_the_access_log(svc):
    r = httpx.post(svc.base + "/v1/completions", json={"prompt": PROMPT, "steps": 0},
                   headers={"X-Request-Id": "bad-steps"})  # fmt: skip
    assert r.status_code == 400
    (line,) = wait_for(lambda: access_lines(svc, "bad-steps"), what="access line")
    assert "status=400" in line and "error=" in line and "steps:" in line


def test_a_non_streaming_client_that_leaves_cancels_its_generation(svc):
    """curl -m on a long chat completion (no stream): the generation is cancelled at the
    scheduler, not run to its end, and the gateway counts it as cancelled."""
    before = scrape(svc.base + "/metrics")
    body = {"messages": MESSAGES, "max_tokens": 256, "steps": 256, "stop_at_eos": False}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(svc.base + "/v1/chat/completions", json=body, timeout=httpx.Timeout(60, read=2),
                   headers={"X-Request-Id": "leaver"})  # fmt: skip
    wait_for(lambda: svc.req("leaver").get("status") == rk.CANCELLED, what="cancelled")
    name = "dllmserve:http_generations_total"

    def counted() -> float:
        return total(scrape(svc.base + "/metrics"), name, finished_reason="cancelled")

    wait_for(lambda: counted() == total(before, name, finished_reason="cancelled") + 1,
             what="counted")  # fmt: skip
    (line,) = wait_for(lambda: access_lines(svc, "leaver"), what="access line")
    assert "status=499" in line


def test_models_retrieve_and_their_fields(svc, oai):
    (listed,) = oai.models.list().data
    assert listed.created > 1_700_000_000  # a real time, not 0
    got = oai.models.retrieve(listed.id)
    assert (got.id, got.object, got.created) == (listed.id, "model", listed.created)
    config = json.loads((default_model_path() / "config.json").read_text())
    assert got.max_model_len == listed.max_model_len == config["max_sequence_length"]
    with pytest.raises(openai.NotFoundError) as e:
        oai.models.retrieve("no-such-model")
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"


def test_unknown_routes_and_wrong_methods_answer_json(svc):
    r = httpx.get(svc.base + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = httpx.get(svc.base + "/v1/chat/completions")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json()["error"]["message"] == "GET is not allowed on '/v1/chat/completions'"
    r = httpx.delete(svc.base + "/v1/models")
    assert r.status_code == 405 and "error" in r.json()


def test_usage_counts_the_tokens_returned_after_a_stop_string(svc, oai):
    kw = {"model": "", "messages": MESSAGES, "max_tokens": 32, "extra_body": {"steps": 16}}
    full = oai.chat.completions.create(**kw)
    text = full.choices[0].message.content
    stop = text[3:6]
    assert stop.strip() and text.find(stop) == 3, text
    cut = oai.chat.completions.create(stop=[stop], **kw)
    assert cut.choices[0].message.content == text[:3]
    # The tiny model's tokenizer spends one token per ASCII character.
    assert full.usage.completion_tokens == len(text.encode())
    assert cut.usage.completion_tokens == 3
    chunks = list(
        oai.chat.completions.create(
            stop=stop, stream=True, stream_options={"include_usage": True}, **kw
        )
    )
    assert chunks[-1].usage.completion_tokens == 3
    # `model` left out: the answer and the metric labels name the model that ran it.
    assert cut.model == svc.model.name
    labels = scrape(svc.base + "/metrics")
    assert total(labels, "dllmserve:http_generations_total", model_name=svc.model.name) >= 3
    assert total(labels, "dllmserve:http_generations_total", model_name="") == 0


def test_cors_only_for_the_allowed_origins(svc):
    pre = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "content-type,authorization"}  # fmt: skip
    r = httpx.options(svc.cors + "/v1/chat/completions", headers=pre)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    r = httpx.get(svc.cors + "/v1/models", headers={"Origin": ORIGIN})
    assert r.headers["access-control-allow-origin"] == ORIGIN
    r = httpx.get(svc.cors + "/v1/models", headers={"Origin": "http://elsewhere.example"})
    assert "access-control-allow-origin" not in r.headers
    r = httpx.get(svc.base + "/v1/models", headers={"Origin": ORIGIN})  # the default: none
    assert "access-control-allow-origin" not in r.headers


DEEP = 100_000
HOSTILE = [
    ("arrays", b'{"prompt": ' + b"[" * DEEP + b"]" * DEEP + b"}", "body"),
    ("objects", b'{"prompt": ' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"}", "body"),
    ("content", b'{"messages": [{"role": "user", "content": "x\\ud800"}]}', "messages[0].content"),
    ("prompt", b'{"prompt": "\\ud800"}', "prompt"),
    ("model", b'{"model": "\\udfff", "prompt": "x"}', "model"),
    ("mask_placeholder", b'{"prompt": "x", "mask_placeholder": "\\ud800"}', "mask_placeholder"),
    ("key", b'{"prompt": "x", "\\ud800": 1}', "body key"),
]  # fmt: skip


@pytest.mark.parametrize("name,body,param", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_json_is_a_400_in_openais_shape(svc, name, body, param):
    path = "/v1/chat/completions" if b"messages" in body else "/v1/completions"
    r = httpx.post(
        svc.base + path,
        content=body,
        headers={"Content-Type": "application/json", "X-Request-Id": f"hostile-{name}"},
    )
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error", err
    (line,) = wait_for(lambda: access_lines(svc, f"hostile-{name}"), what="access line")
    assert "Traceback" not in Path(svc.gateways[0].log_path).read_text(errors="replace")


def test_a_streamed_request_without_block_length_shows_text_before_its_last_step(svc):
    """No block_length: blocks of 32 over HTTP, so the first block's text arrives while the
    second is still denoising (one block would show nothing before the last steps)."""
    body = {"prompt": PROMPT, "max_tokens": 64, "steps": 32, "stream": True,
            "stream_mode": "denoise", "stop_at_eos": False}  # fmt: skip
    with httpx.stream("POST", svc.base + "/v1/completions", json=body, timeout=120) as r:
        chunks = [json.loads(x[6:]) for x in r.iter_lines()
                  if x.startswith("data: {")]  # fmt: skip
    steps = [(c["choices"][0]["denoise"], c["choices"][0]["text"]) for c in chunks
             if "denoise" in c["choices"][0]]  # fmt: skip
    assert [d["step"] for d, _ in steps] == list(range(1, 33))
    first = [(d, text) for d, text in steps if d["block_index"] == 0]
    # The first block is whole after its 16 steps, its text sent, the second one all masks.
    assert len(first) == 16 and first[-1][0]["masked_left"] == 32
    assert all(p < 32 for d, _ in first for p in d["positions"])
    assert "".join(text for _, text in first), steps


def test_the_default_block_length_only_where_it_splits_evenly():
    def block(**body) -> int | None:
        sp = plan({"prompt": "x", **body}, chat=False).requests[0].sampling_params
        return sp.block_length if sp.HasField("block_length") else None

    assert block(max_tokens=64, steps=32) == 32
    assert block() == 32  # the defaults: 128 tokens in 128 steps
    assert block(max_tokens=32) is None  # one block anyway
    assert block(max_tokens=48) is None  # 32 does not divide it
    assert block(max_tokens=64, steps=33) is None  # uneven steps per block
    assert block(max_tokens=64, block_length=64) == 64  # the caller's choice stands
    assert block(max_tokens=64, sparse_config={}) is None  # the sparse default_block_len
    assert block(max_tokens=64, schedule="dream") is None
    assert block(max_tokens=64, remasking="entropy") is None
