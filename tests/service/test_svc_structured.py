"""Structured outputs through the service: a real scheduler, a CPU worker on a tiny random-weights
checkpoint (whose unconstrained answers are garbage) and the HTTP gateway driven by the official
`openai` client. Every constrained answer parses and validates, over gRPC and HTTP; refusals are
INVALID_ARGUMENT / 400 naming the field the caller sent; a constrained stream runs beside an
unconstrained one and its text only grows; and a compile that has not finished does not stop
the worker stepping the other requests."""

from __future__ import annotations

import json
import re

import grpc
import httpx
import jsonschema
import openai
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from http_util import add_gateway
from svc_util import Cluster, Stream, wait_for

from dllmserve.client import Client, StepUpdate

TOOL_CALL = {
    "type": "object",
    "properties": {
        "name": {"enum": ["get_weather", "get_time"]},
        "arguments": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 8},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "days"],
        },
    },
    "required": ["name", "arguments"],
}
ITEMS = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99},
         "minItems": 1, "maxItems": 3}  # fmt: skip
CODE = r"[A-Z]{3}-[0-9]{2,4}"
CHOICES = ["positive", "negative", "neutral"]
SP = {"gen_length": 64, "steps": 32, "block_length": 32, "seed": 3}


@pytest.fixture(scope="module")
def svc(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("structured")
    gate = root / "compile-gate"
    gate.touch()  # compiles run; a test removes it to hold them
    c = Cluster(root, tiny_model)
    try:
        c.add_scheduler()
        c.add_worker(env={"DLLMSERVE_FAULT_COMPILE_GATE": str(gate)})
        c.gate = gate
        c.base = add_gateway(c)
        c.model_name = tiny_model.name
        yield c
    finally:
        gate.touch()
        c.close()


@pytest.fixture(scope="module")
def oai(svc):
    return openai.OpenAI(base_url=svc.base + "/v1", api_key="unused", max_retries=0)


def bad_request_field(err: grpc.RpcError) -> str:
    st = rpc_status.from_call(err)
    for d in st.details:
        br = error_details_pb2.BadRequest()
        if d.Unpack(br):
            return br.field_violations[0].field
    return ""


@pytest.mark.parametrize(
    "so, check",
    [
        ({"json_schema": TOOL_CALL}, lambda t: jsonschema.validate(json.loads(t), TOOL_CALL)),
        ({"json_schema": ITEMS}, lambda t: jsonschema.validate(json.loads(t), ITEMS)),
        ({"json_object": True}, lambda t: isinstance(json.loads(t), dict) or 1 / 0),
        ({"regex": CODE}, lambda t: re.fullmatch(CODE, t) or 1 / 0),
        ({"choice": CHOICES}, lambda t: t in CHOICES or 1 / 0),
    ],
)
def test_grpc_answers_match(svc, so, check):
    with Client(svc.target) as c:
        for seed in (1, 2):
            sp = {**SP, "seed": seed, "temperature": 0.7, "structured_output": so}
            done = c.generate_text("Answer:", sampling_params=sp)
            check(done.text)


def test_the_unconstrained_answer_is_garbage(svc):
    """What the constraint is up against: the same model's free answer is not JSON."""
    with Client(svc.target) as c:
        text = c.generate_text("Answer:", sampling_params=SP).text
    with pytest.raises(ValueError):
        json.loads(text)


@pytest.mark.parametrize(
    "so, gen_length, field, reason",
    [
        ({"json_schema": {"type": "string", "not": {}}}, 64,
         "sampling_params.structured_output.json_schema", "not"),
        ({"json_schema": '{"type": '}, 64,
         "sampling_params.structured_output.json_schema", "not valid JSON"),
        ({"regex": "(?=a)b"}, 64, "sampling_params.structured_output.regex", "cannot be compiled"),
        ({"choice": ["a", ""]}, 64, "sampling_params.structured_output.choice[1]", "non-empty"),
        ({"json_schema": TOOL_CALL}, 16, "sampling_params.gen_length", "must be at least"),
    ],
)  # fmt: skip
def test_grpc_refusals_name_the_field(svc, so, gen_length, field, reason):
    """Model-free checks are the scheduler's, compiling and the canvas length the worker's:
    either way the request ends with INVALID_ARGUMENT naming the field."""
    sp = {**SP, "gen_length": gen_length, "steps": gen_length, "block_length": gen_length,
          "structured_output": so}  # fmt: skip
    with Client(svc.target) as c, pytest.raises(grpc.RpcError) as e:
        c.generate_text("Answer:", sampling_params=sp, reattach=False)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert e.value.details().startswith(f"{field}:"), e.value.details()
    assert bad_request_field(e.value) == field
    assert reason in e.value.details()


def test_a_constrained_stream_beside_an_unconstrained_one(svc):
    """Both run in the same batches; the constrained one's text stream only ever appends, every
    text it shows is a prefix of the accepted answer, and the answer validates."""
    sp = {**SP, "gen_length": 96, "steps": 48, "structured_output": {"json_schema": TOOL_CALL}}
    free = {**SP, "gen_length": 96, "steps": 48, "stop_at_eos": False}
    a = Stream(svc.target, "so-stream-a", sp, prompt="Call a tool:")
    b = Stream(svc.target, "so-stream-b", free, prompt="Call a tool:")
    a.start(), b.start()
    a.join(300), b.join(300)
    assert a.error is None and b.error is None, (a.error, b.error)
    done = a.completed()
    jsonschema.validate(json.loads(done.text), TOOL_CALL)
    shown = ""
    growth = 0
    for s in a.steps():
        shown += s.text_delta
        assert done.text.startswith(shown)
        growth += bool(s.text_delta)
    assert shown == done.text and growth >= 2  # it streamed, block by block
    assert b.completed() is not None


def test_a_compile_does_not_hold_the_other_requests(svc):
    """While a constraint is compiling (held by the fault gate), an unconstrained request sent
    after it runs every step and completes; the constrained one runs once the compile ends."""
    svc.gate.unlink()
    try:
        sp = {**SP, "structured_output": {"regex": r"held-[0-9]{3}"}}
        held = Stream(svc.target, "so-held", sp, prompt="Held:")
        held.start()
        wait_for(lambda: svc.req("so-held").get("worker"), 60, what="the held request taken")
        other = Stream(svc.target, "so-other", {**SP, "stop_at_eos": False}, prompt="Free:")
        other.start()
        other.join(300)
        assert other.completed() is not None, other.error
        assert len(other.steps()) == SP["steps"]
        assert not [e for e in held.events if isinstance(e, StepUpdate)]  # still compiling
    finally:
        svc.gate.touch()
    held.join(300)
    assert held.error is None, held.error
    assert re.fullmatch(r"held-[0-9]{3}", held.completed().text)


def test_http_response_format_and_structured_outputs(svc, oai):
    m = svc.model_name
    msgs = [{"role": "user", "content": "Call a tool"}]
    rf = {"type": "json_schema", "json_schema": {"name": "call", "schema": TOOL_CALL,
                                                 "strict": True}}  # fmt: skip
    got = oai.chat.completions.create(model=m, messages=msgs, max_tokens=64, response_format=rf,
                                      extra_body={"steps": 32, "seed": 5})  # fmt: skip
    jsonschema.validate(json.loads(got.choices[0].message.content), TOOL_CALL)
    got = oai.chat.completions.create(model=m, messages=msgs, max_tokens=64,
                                      response_format={"type": "json_object"}, seed=6)  # fmt: skip
    assert isinstance(json.loads(got.choices[0].message.content), dict)
    got = oai.completions.create(model=m, prompt="Code:", max_tokens=32,
                                 extra_body={"structured_outputs": {"regex": CODE}})  # fmt: skip
    assert re.fullmatch(CODE, got.choices[0].text)
    so = {"structured_outputs": {"choice": CHOICES}}
    got = oai.completions.create(model=m, prompt="Mood:", max_tokens=32, n=2, temperature=0.8,
                                 extra_body=so)  # fmt: skip
    assert all(c.text in CHOICES for c in got.choices)
    chunks = oai.chat.completions.create(model=m, messages=msgs, max_tokens=64, stream=True,
                                         response_format=rf, seed=7)  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    jsonschema.validate(json.loads(text), TOOL_CALL)


@pytest.mark.parametrize(
    "extra, param, reason",
    [
        ({"response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "object", "minProperties": 1}}}},
         "response_format.json_schema.schema", "minProperties"),
        ({"structured_outputs": {"json": {"type": "integer", "multipleOf": 3}}},
         "structured_outputs.json", "multipleOf"),
        ({"structured_outputs": {"regex": "(a)\\1"}}, "structured_outputs.regex",
         "cannot be compiled"),
        ({"structured_outputs": {"choice": []}}, "structured_outputs.choice", "1 to 1024"),
        ({"structured_outputs": {"grammar": "root ::= x"}}, "structured_outputs.grammar",
         "unknown field"),
        ({"structured_output": {"regex": "a"}}, "structured_output", "unknown field"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "t",
          "schema": TOOL_CALL}}, "max_tokens": 8}, "max_tokens", "must be at least"),
    ],
)  # fmt: skip
def test_http_refusals_name_the_body_field(svc, extra, param, reason):
    body = {"model": svc.model_name, "prompt": "x", "max_tokens": 32, **extra}
    r = httpx.post(svc.base + "/v1/completions", json=body, timeout=120)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param, err
    assert err["message"].startswith(f"{param}:") and reason in err["message"], err


def test_a_request_cancelled_while_compiling(svc):
    """Cancelled while its compile is held: the stream ends CANCELLED, the compile that ends
    later admits nothing, and the worker serves the next constrained request."""
    svc.gate.unlink()
    try:
        sp = {**SP, "structured_output": {"regex": r"gone-[0-9]{2}"}}
        held = Stream(svc.target, "so-cancelled", sp, prompt="Gone:")
        held.start()
        wait_for(lambda: svc.req("so-cancelled").get("worker"), 60, what="the request taken")
        with Client(svc.target) as c:
            assert c.cancel("so-cancelled") in ("cancelling", "cancelled")
        held.join(120)
        assert held.error is not None and held.error.code() == grpc.StatusCode.CANCELLED
    finally:
        svc.gate.touch()
    with Client(svc.target) as c:
        text = c.generate_text("Code:", sampling_params={**SP, "structured_output": {
            "regex": r"gone-[0-9]{2}"}}).text  # fmt: skip
    assert re.fullmatch(r"gone-[0-9]{2}", text)
    assert not [e for e in held.events if isinstance(e, StepUpdate)]
