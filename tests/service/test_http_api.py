"""The OpenAI-compatible HTTP API, driven by the official `openai` client: a real gateway in
front of a real scheduler and a CPU worker serving the shipped tiny model."""

from __future__ import annotations

import json
import signal

import grpc
import httpx
import openai
import pytest
from http_util import add_gateway, get
from svc_util import Cluster, wait_for

from dllmserve.assets import default_model_path
from dllmserve.broker import redis_keys as rk
from dllmserve.client import Client
from dllmserve.gateway.requests import plan

PROMPT = "Repeat exactly: serving diffusion models"
MESSAGES = [{"role": "user", "content": PROMPT}]
SP = {"gen_length": 32, "steps": 16, "seed": 7}
DLLM = {"steps": 16, "seed": 7}  # what the SDKs send as extra_body


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("http"), default_model_path())
    try:
        c.add_scheduler()
        c.add_worker()
        c.model_name = c.model.name
        c.base = add_gateway(c)
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def oai(svc):
    return openai.OpenAI(base_url=svc.base + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def grpc_client(svc):
    with Client(svc.target) as c:
        yield c


def test_chat_and_completion_equal_the_grpc_results(svc, oai, grpc_client):
    want_chat = grpc_client.generate_text(messages=MESSAGES, sampling_params=SP)
    got = oai.chat.completions.create(model=svc.model_name, messages=MESSAGES, max_tokens=32,
                                      extra_body=DLLM)  # fmt: skip
    assert got.choices[0].message.content == want_chat.text and want_chat.text
    assert got.choices[0].message.role == "assistant"
    assert got.choices[0].finish_reason in ("stop", "length")
    assert got.usage.prompt_tokens == want_chat.usage.prompt_tokens
    assert got.usage.completion_tokens == want_chat.usage.generated_tokens
    assert got.object == "chat.completion" and got.model == svc.model_name
    want_text = grpc_client.generate_text(PROMPT, sampling_params=SP)
    got = oai.completions.create(model=svc.model_name, prompt=PROMPT, max_tokens=32,
                                 extra_body=DLLM)  # fmt: skip
    assert got.choices[0].text == want_text.text and got.object == "text_completion"


def test_streams_concatenate_to_the_grpc_text(svc, oai, grpc_client):
    want = grpc_client.generate_text(messages=MESSAGES, sampling_params=SP)
    chunks = list(oai.chat.completions.create(
        model=svc.model_name, messages=MESSAGES, max_tokens=32, stream=True,
        stream_options={"include_usage": True}, extra_body=DLLM))  # fmt: skip
    choices = [c.choices[0] for c in chunks if c.choices]
    assert choices[0].delta.role == "assistant"
    assert "".join(c.delta.content or "" for c in choices) == want.text
    assert [c.finish_reason for c in choices][-1] in ("stop", "length")
    assert all(c.finish_reason is None for c in choices[:-1])
    assert chunks[-1].usage.completion_tokens == want.usage.generated_tokens
    assert chunks[-1].usage.model_extra["denoising_steps"] == want.usage.steps
    text = "".join(
        c.choices[0].text
        for c in oai.completions.create(
            model=svc.model_name, prompt=PROMPT, max_tokens=32, stream=True, extra_body=DLLM
        )
    )
    assert text == grpc_client.generate_text(PROMPT, sampling_params=SP).text


def test_denoise_stream_mode_carries_every_step(svc, oai, grpc_client):
    sp = {"gen_length": 32, "steps": 16, "block_length": 16, "seed": 2, "stop_at_eos": False}
    want = grpc_client.generate_text(PROMPT, sampling_params=sp, sparse_config={})
    body = {"stream_mode": "denoise", "sparse_config": {}, **{k: sp[k] for k in sp if
            k != "gen_length"}}  # fmt: skip
    chunks = list(oai.completions.create(model=svc.model_name, prompt=PROMPT, max_tokens=32,
                                         stream=True, extra_body=body))  # fmt: skip
    steps = [c.choices[0].model_extra["denoise"] for c in chunks
             if c.choices[0].model_extra.get("denoise")]  # fmt: skip
    assert [d["step"] for d in steps] == list(range(1, want.usage.steps + 1))
    canvas = [-1] * 32
    for d in steps:
        assert len(d["positions"]) == len(d["token_ids"]) == len(d["token_texts"]) > 0
        for p, t in zip(d["positions"], d["token_ids"], strict=True):
            assert canvas[p] == -1, "a position was committed twice"
            canvas[p] = t
        assert d["masked_left"] == canvas.count(-1)
    assert canvas == list(want.token_ids)
    assert "_" in steps[0]["canvas"] and "_" not in steps[-1]["canvas"]
    # block_done marks each block's last step (two blocks of 16 here), and only that one.
    last_of_block = {d["block_index"]: d["step"] for d in steps}
    assert sorted(last_of_block) == [0, 1]
    assert [d["step"] for d in steps if d["block_done"]] == sorted(last_of_block.values())
    # The ordinary text deltas ride along, so a plain client sees a normal stream.
    assert "".join(c.choices[0].text for c in chunks) == want.text


def test_n_gives_consecutive_seeds(svc, oai, grpc_client):
    sp = {"gen_length": 16, "steps": 8, "temperature": 1.0}
    got = oai.completions.create(model=svc.model_name, prompt=PROMPT, max_tokens=16, n=2,
                                 extra_body={"steps": 8, "seed": 5}, temperature=1.0)  # fmt: skip
    want = [grpc_client.generate_text(PROMPT, sampling_params={**sp, "seed": s}).text
            for s in (5, 6)]  # fmt: skip
    assert [c.index for c in got.choices] == [0, 1]
    assert [c.text for c in got.choices] == want


def test_stop_string_cuts_the_answer(svc, oai, grpc_client):
    full = grpc_client.generate_text(messages=MESSAGES, sampling_params=SP).text
    stop = full[3:6]
    assert stop.strip() and full.find(stop) == 3, full
    kw = {"model": svc.model_name, "messages": MESSAGES, "max_tokens": 32, "extra_body": DLLM}
    got = oai.chat.completions.create(stop=[stop], **kw)
    assert got.choices[0].message.content == full[:3]
    assert got.choices[0].finish_reason == "stop"
    chunks = list(oai.chat.completions.create(stop=stop, stream=True, **kw))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == full[:3]
    assert chunks[-1].choices[0].finish_reason == "stop"


# (keyword arguments of chat.completions.create, the field the 400 must name)
BAD = [
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 100_000}, "max_tokens"),
    ({"extra_body": {"steps": 0}}, "steps"),
    ({"temperature": -1.0}, "temperature"),
    ({"extra_body": {"remasking": "sideways"}}, "remasking"),
    ({"extra_body": {"schedule": "llada"}}, "schedule"),
    ({"extra_body": {"alg_temp": 20}}, "alg_temp"),
    ({"extra_body": {"eps": "small"}}, "eps"),
    ({"extra_body": {"sparse_config": {"retention_ratio": 2.0}}}, "sparse_config.retention_ratio"),
    ({"extra_body": {"sparse_config": {"ratio": 0.5}}}, "sparse_config.ratio"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"messages": []}, "messages"),
    ({"extra_body": {"priority": 1000}}, "priority"),
    ({"extra_body": {"steps": "many"}}, "steps"),
    ({"extra_body": {"stream_mode": "pixels"}}, "stream_mode"),
    ({"extra_body": {"mask_placeholder": "#" * 17}}, "mask_placeholder"),
    ({"n": 100}, "n"),
    ({"logprobs": True}, "logprobs"),
    ({"extra_body": {"stepz": 3}}, "stepz"),
]  # fmt: skip


@pytest.mark.parametrize("kw,param", BAD, ids=[p for _, p in BAD])
def test_bad_fields_are_400_naming_them(svc, oai, kw, param):
    kw = {"model": svc.model_name, "messages": MESSAGES, "max_tokens": 16} | kw
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(**kw)
    err = e.value.body
    assert err["param"] == param, err
    assert err["message"].startswith(param + ":"), err
    assert err["type"] == "invalid_request_error"


def test_dream_sampler_fields_reach_the_grpc_request():
    body = {"prompt": PROMPT, "max_tokens": 16, "schedule": "dream", "remasking": "origin",
            "alg_temp": 0.25, "eps": 0.5}  # fmt: skip
    sp = plan(body, chat=False).requests[0].sampling_params
    assert (sp.schedule, sp.remasking, sp.alg_temp, sp.eps) == ("dream", "origin", 0.25, 0.5)
    assert not plan({"prompt": PROMPT}, chat=False).requests[0].sampling_params.HasField("schedule")


def test_the_rules_are_the_grpc_ones(svc, oai, grpc_client):
    """The same bad value gets the same reason over HTTP and gRPC (one source of rules)."""
    with pytest.raises(grpc.RpcError) as g:
        grpc_client.generate_text(PROMPT, sampling_params={"gen_length": 16, "steps": 32})
    with pytest.raises(openai.BadRequestError) as h:
        oai.completions.create(model=svc.model_name, prompt=PROMPT, max_tokens=16,
                               extra_body={"steps": 32})  # fmt: skip
    assert h.value.body["message"] == g.value.details().replace("sampling_params.", "", 1)
    # Checks that need the model (here its vocabulary) name the field the caller sent too.
    with pytest.raises(openai.BadRequestError) as h:
        oai.completions.create(model=svc.model_name, prompt=[10**6], max_tokens=16,
                               extra_body={"steps": 8})  # fmt: skip
    assert h.value.body["param"] == "prompt"


def test_unknown_model_is_404_and_models_are_listed(svc, oai):
    with pytest.raises(openai.NotFoundError) as e:
        oai.chat.completions.create(model="no-such-model", messages=MESSAGES, max_tokens=16)
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"
    assert "no-such-model" in e.value.body["message"]
    assert [m.id for m in oai.models.list().data] == [svc.model_name]
    assert get(svc.base + "/health") == (200, json.dumps({"status": "ok"}, separators=(",", ":")))


def test_bad_bodies(svc):
    url = svc.base + "/v1/chat/completions"
    r = httpx.post(url, content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "body"
    r = httpx.post(url, json=[1, 2])
    assert r.status_code == 400 and r.json()["error"]["param"] == "body"
    r = httpx.post(url, content=b"x" * (4 * 1024 * 1024 + 1))
    assert r.status_code == 413


def test_a_client_that_leaves_cancels_its_generation(svc):
    body = {"model": svc.model_name, "prompt": PROMPT, "max_tokens": 256, "steps": 256,
            "stop_at_eos": False, "stream": True, "stream_mode": "denoise"}  # fmt: skip
    with httpx.stream("POST", svc.base + "/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        rid = r.headers["x-request-id"]  # one choice: it runs under the request's id
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
    wait_for(lambda: svc.req(rid).get("status") == rk.CANCELLED, what="cancelled")


def test_auth_rate_limit_and_draining(tmp_path, tiny_model):
    """401 without / with a wrong token (the scheduler's check), 429 + Retry-After when its
    queue is full, 503 + Retry-After once it drains."""
    c = Cluster(tmp_path, tiny_model)
    try:
        c.add_scheduler("--auth-token", "s3cret", "--max-queue", "1", "--drain-grace", "30")
        base = add_gateway(c, "--retries", "0")
        wrong = openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.chat.completions.create(model="", messages=MESSAGES, max_tokens=16)
        r = httpx.get(base + "/v1/models")  # no token at all (the SDK insists on one)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        oai = openai.OpenAI(base_url=base + "/v1", api_key="s3cret", max_retries=0)
        assert oai.models.list().data == []
        # No worker: one request waits in the queue, the next is refused with a retry hint.
        body = {"prompt": "wait", "max_tokens": 16, "steps": 8, "stream": True}
        headers = {"Authorization": "Bearer s3cret"}
        with httpx.stream("POST", base + "/v1/completions", json=body, headers=headers,
                          timeout=60) as waiting:  # fmt: skip
            assert waiting.status_code == 200
            with pytest.raises(openai.RateLimitError) as e:
                oai.completions.create(model="", prompt="one too many", max_tokens=16,
                                       extra_body={"steps": 8})  # fmt: skip
            assert int(e.value.response.headers["retry-after"]) >= 1
            # SIGTERM: the scheduler drains (its open stream keeps it up), new calls get 503.
            c.schedulers[0][0].send_signal(signal.SIGTERM)
            wait_for(lambda: c.client.hget(rk.req_key(
                waiting.headers["x-request-id"]), "status"), what="queued")  # fmt: skip

            def refused() -> int:
                r = httpx.post(base + "/v1/completions", json=body | {"stream": False},
                               headers=headers, timeout=60)  # fmt: skip
                return r.status_code == 503 and r

            r = wait_for(refused, 30, 0.2, what="503")
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["type"] == "service_unavailable"
            assert httpx.get(base + "/health").status_code == 503
    finally:
        c.close()


def test_serve_starts_the_gateway_and_prints_its_url(tmp_path):
    import os
    import subprocess
    import sys

    from dllmserve.scheduler.local_redis import free_port

    metrics = free_port()
    cmd = [sys.executable, "-m", "dllmserve.cli", "--log-level", "WARNING", "serve",
           "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--metrics-port",
           str(metrics), "--max-num-seqs", "4"]  # fmt: skip
    log = tmp_path / "serve.log"
    with open(log, "wb") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    try:
        line = wait_for(lambda: next((x for x in log.read_text().splitlines()
                                      if "HTTP API" in x), None), 120, what="url")  # fmt: skip
        url = line.split(" on ")[-1].strip()
        wait_for(lambda: "ready. Try" in log.read_text(), 300, what="ready")
        wait_for(lambda: get(url + "/health")[0] == 200, 60, what="gateway")
        models = httpx.get(url + "/v1/models").json()["data"]
        assert [m["id"] for m in models] == [default_model_path().name]
        assert "dllmserve:queue_length" in get(f"http://127.0.0.1:{metrics}/metrics")[1]
        assert get(url + "/")[1].startswith("<!doctype html>")
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == 0, log.read_text()
