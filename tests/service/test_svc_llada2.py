"""A tiny LLaDA2 checkpoint in the official layout served end to end (a CPU worker, the scheduler
over gRPC, the HTTP gateway): its tokens the official generate's, its text streamed block by
block before the request ends, and LLaDA2.1's edits in the step updates and the denoise
stream."""

from __future__ import annotations

import json
import subprocess
import sys

import grpc
import httpx
import pytest

from dllmserve.client import Client
from dllmserve.client.types import Completed, StepUpdate
from dllmserve.v1 import dllm_pb2 as pb
from dllmserve.v1 import dllm_pb2_grpc as pb_grpc

PROMPT = [45, 46, 47, 88, 99, 60, 70, 80, 5, 6, 7]
SP = {"gen_length": 24, "block_length": 8, "steps_per_block": 4, "threshold": 0.9}
EDITING = {"gen_length": 16, "block_length": 4, "steps_per_block": 4, "threshold": 0.5,
           "editing_threshold": 0.3}  # fmt: skip
MESSAGES = [{"role": "user", "content": "Hi there"}]


@pytest.fixture(scope="module")
def l2_svc(tmp_path_factory):
    from http_util import add_gateway
    from svc_util import Cluster, free_port

    from dllmserve.testing.tiny_llada2 import write_tiny_llada2

    root = tmp_path_factory.mktemp("llada2-svc")
    path = write_tiny_llada2(root / "tiny-llada2", seed=3, logit_scale=12.0)
    c = Cluster(root / "svc", path)
    try:
        c.add_scheduler()
        c.http_port = free_port()
        c.add_worker("--model-name", "llada2-tiny", "--http-port", str(c.http_port))
        c.base = add_gateway(c)
        yield c
    finally:
        c.close()


def test_grpc_tokens_are_the_official_generates(l2_svc):
    from tests.plain_llada2 import PlainLlada2, generate

    with Client(l2_svc.target) as cl:
        done = cl.generate_text(token_ids=PROMPT, sampling_params=SP)
    ref = PlainLlada2(l2_svc.model)
    want = generate(ref, PROMPT, gen_length=24, block_length=8, steps=4, threshold=0.9)
    assert list(done.token_ids) == want + [ref.eos_id] * (24 - len(want))


def test_text_streams_a_finished_block_before_the_end(l2_svc):
    with Client(l2_svc.target) as cl:
        evs = list(cl.generate(messages=MESSAGES, sampling_params=SP))
    steps = [e for e in evs if isinstance(e, StepUpdate)]
    done = next(e for e in evs if isinstance(e, Completed))
    first = next(i for i, s in enumerate(steps) if s.text_delta)
    assert first < len(steps) - 1 and steps[first].block_index < steps[-1].block_index
    assert "".join(s.text_delta for s in steps) == done.text


def test_grpc_step_updates_carry_the_edits(l2_svc):
    req = pb.GenerateRequest(
        request_id="edits-1", token_ids=pb.TokenIds(ids=PROMPT),
        sampling_params=pb.SamplingParams(**EDITING),
    )  # fmt: skip
    with grpc.insecure_channel(l2_svc.target) as ch:
        updates = [ev.step for ev in pb_grpc.DllmServiceStub(ch).Generate(req, timeout=120)
                   if ev.HasField("step")]  # fmt: skip
    edits = [e for u in updates for e in u.edits]
    assert edits, "an editing_threshold of 0.3 edits on this model"
    canvas: dict[int, int] = {}
    for u in updates:
        for e in u.edits:  # an edit replaces what the canvas held, and is among the positions
            assert canvas[e.position] == e.old_token_id != e.new_token_id
            assert e.position in u.positions
        canvas.update(zip(u.positions, u.token_ids, strict=True))


def _sse(base: str, body: dict) -> list[dict]:
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        return [json.loads(x[6:]) for x in r.iter_lines()
                if x.startswith("data: ") and x != "data: [DONE]"]  # fmt: skip


def test_http_streams_text_early_and_edits_in_the_denoise_stream(l2_svc):
    body = {"model": "llada2-tiny", "messages": MESSAGES, "stream": True, **SP}
    chunks = _sse(l2_svc.base, body)
    texts = [i for i, c in enumerate(chunks)
             if c["choices"] and c["choices"][0]["delta"].get("content")]  # fmt: skip
    ends = [i for i, c in enumerate(chunks) if c["choices"] and c["choices"][0]["finish_reason"]]
    assert texts and ends and texts[0] < ends[0]
    body = {"model": "llada2-tiny", "messages": MESSAGES, "stream": True,
            "stream_mode": "denoise", **EDITING}  # fmt: skip
    denoise = [c["choices"][0]["denoise"] for c in _sse(l2_svc.base, body)
               if c["choices"] and c["choices"][0].get("denoise")]  # fmt: skip
    edits = [e for d in denoise for e in d.get("edits", [])]
    assert edits and {"position", "old_token_id", "new_token_id", "text"} <= set(edits[0])


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dllmserve.cli", "--log-level", "WARNING", *args],
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_cli_takes_llada2s_arguments(l2_svc):
    flags = ["--gen-length", "24", "--block-length", "8", "--steps-per-block", "4",
             "--threshold", "0.9", "--eos-early-stop"]  # fmt: skip
    out = _cli("generate", "--target", l2_svc.target, *flags, "--json", "Hi there")
    assert out.returncode == 0, out.stderr
    with Client(l2_svc.target) as cl:
        want = cl.generate_text(messages=MESSAGES, sampling_params={**SP, "eos_early_stop": True})
    assert json.loads(out.stdout)["token_ids"] == list(want.token_ids)
    bad = _cli("generate", "--target", l2_svc.target, "--minimal-topk", "0", "Hi")
    assert bad.returncode == 1 and "sampling_params.minimal_topk" in bad.stderr


def test_prefix_cache_metrics(l2_svc):
    """Two requests sharing a full prompt block of 16 (the worker's page size): the second one
    hits the worker's prefix cache, and its /metrics say so."""
    from http_util import scrape, total

    shared = list(range(40, 56))
    sp = {"gen_length": 16, "block_length": 16, "steps_per_block": 4}
    with Client(l2_svc.target) as cl:
        for tail in ([1, 2], [3, 4, 5]):
            cl.generate_text(token_ids=shared + tail, sampling_params=sp)
    m = scrape(f"http://127.0.0.1:{l2_svc.http_port}/metrics")
    assert total(m, "dllmserve:prefix_cache_hit_rate") > 0
    assert total(m, "dllmserve:prefix_cache_pages") > 0


MOOD = {
    "type": "object",
    "properties": {"mood": {"enum": ["up", "down"]}, "n": {"type": "integer", "minimum": 0}},
    "required": ["mood", "n"],
}


def test_structured_outputs_over_grpc_and_the_openai_sdk(l2_svc):
    """A JSON schema on the block-diffusion model, through the scheduler (gRPC) and the
    gateway (`openai`'s response_format): the answers validate."""
    import jsonschema
    import openai

    sp = {**SP, "gen_length": 40, "structured_output": {"json_schema": MOOD}}
    with Client(l2_svc.target) as cl:
        for seed in (1, 2):
            done = cl.generate_text(messages=MESSAGES, sampling_params={**sp, "seed": seed})
            jsonschema.validate(json.loads(done.text), MOOD)
    oai = openai.OpenAI(base_url=l2_svc.base + "/v1", api_key="unused", max_retries=0)
    rf = {"type": "json_schema", "json_schema": {"name": "mood", "schema": MOOD, "strict": True}}
    blocks = {"block_length": 8, "steps_per_block": 4}
    got = oai.chat.completions.create(model="llada2-tiny", messages=MESSAGES, max_tokens=40,
                                      response_format=rf, temperature=0.8, seed=4,
                                      extra_body=blocks)  # fmt: skip
    jsonschema.validate(json.loads(got.choices[0].message.content), MOOD)
