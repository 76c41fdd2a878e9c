"""Property-based fuzzing through real gRPC (hypothesis): random GenerateRequests, valid and
not, and random bytes. The service never hangs (every call has a deadline), never crashes, a
request the offline API refuses is INVALID_ARGUMENT naming the same field, and every other one
completes with exactly the tokens `LLM.generate` gives on the same tiny model.

Derandomized with a bounded number of examples, so CI runs the same affordable set each time.
"""

from __future__ import annotations

import math

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from svc_util import bad_request_field

from dllmserve import LLM
from dllmserve.client import Client, build_request
from dllmserve.errors import CapacityError, ValidationError
from dllmserve.scheduler.validation import validate_request

SETTINGS = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
CALL_TIMEOUT_S = 120  # a hang fails as DEADLINE_EXCEEDED
TRIED = {"requests": 0, "ok": 0, "invalid": 0, "capacity": 0, "bytes": 0}


@pytest.fixture(scope="module")
def svc(tmp_path_factory, tiny_model):
    from svc_util import Cluster

    c = Cluster(tmp_path_factory.mktemp("fuzz"), tiny_model)
    try:
        c.add_scheduler()
        c.add_worker()
        yield c
    finally:
        c.close()
        print(f"fuzz: {TRIED}")


@pytest.fixture(scope="module")
def llm(tiny_model):
    return LLM(str(tiny_model))


# Half the examples are drawn valid (so tokens get compared), half wild: edges, non-finite
# floats, out-of-range integers, unknown names.
floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
unit = st.sampled_from([0.0, 0.3, 1.0, 1.5, -0.1, math.nan]) | floats
seeds = st.integers(0, 2**63 - 1)


@st.composite
def good_sampling(draw) -> dict:
    g = draw(st.sampled_from([4, 8, 16]))
    out = {"gen_length": g, "steps": draw(st.sampled_from([g, g // 2])), "seed": draw(seeds)}
    if draw(st.booleans()):
        out["block_length"] = draw(st.sampled_from([g, g // 2]))
    extra = st.fixed_dictionaries(
        {},
        optional={
            "temperature": st.floats(0, 10),
            "cfg_scale": st.floats(0, 10),
            "remasking": st.sampled_from(
                ["low_confidence", "random", "maskgit_plus", "entropy", "origin"]
            ),
            "threshold": st.floats(0, 1),
            "top_p": st.floats(0.01, 1),
            "top_k": st.integers(1, 300),
            "stop_at_eos": st.booleans(),
            "schedule": st.sampled_from(["blocks", "dream"]),
            "eps": st.floats(0, 1),
        },
    )
    out.update(draw(extra))
    if "threshold" not in out and draw(st.booleans()):  # alg_temp > 0 needs no threshold
        out["alg_temp"] = draw(st.floats(0, 10))
    return out


wild_sampling = st.fixed_dictionaries(
    {"gen_length": st.sampled_from([1, 4, 8, 16, 0, -2]), "seed": st.integers(-2, 2**63 - 1)},
    optional={
        "steps": st.integers(-1, 20),
        "block_length": st.integers(-1, 20),
        "temperature": st.sampled_from([0.0, 0.7, 10.0, 11.0, -1.0, math.inf]) | floats,
        "cfg_scale": st.sampled_from([0.0, 0.5, 10.0, 20.0, math.nan]),
        "remasking": st.sampled_from(["low_confidence", "random", "entropy", "bogus", ""]),
        "threshold": unit,
        "top_p": unit,
        "top_k": st.integers(-1, 2_000_000),
        "stop_at_eos": st.booleans(),
        "logits_eos_inf": st.booleans(),
        "schedule": st.sampled_from(["blocks", "dream", "llada", ""]),
        "alg_temp": st.sampled_from([0.0, 0.5, 10.0, 10.5, -1.0, math.nan]),
        "eps": unit,
    },
)
good_sparse = st.none() | st.fixed_dictionaries(
    {
        "retention_ratio": st.floats(0.05, 1),
        "delay_step": st.integers(0, 1),
        "default_block_len": st.sampled_from([4, 8]),
        "head_select": st.booleans(),
        "pool_kernel": st.sampled_from([1, 3, 5]),
    }
)
wild_sparse = st.none() | st.fixed_dictionaries(
    {},
    optional={
        "enabled": st.booleans(),
        "retention_ratio": unit,
        "delay_step": st.integers(-1, 10),
        "default_block_len": st.integers(-1, 20),
        "head_select": st.booleans(),
        "pool_kernel": st.integers(-1, 70),
        "layer_wise": st.booleans(),
        "layer_ratios": st.lists(unit, min_size=0, max_size=3),
    },
)
chat = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant"]), "content": st.text(max_size=20)}
)
good_prompts = st.one_of(
    st.fixed_dictionaries({"prompt": st.text(min_size=1, max_size=30)}),
    st.fixed_dictionaries({"token_ids": st.lists(st.integers(0, 255), min_size=1, max_size=20)}),
    st.fixed_dictionaries({"messages": st.lists(chat, min_size=1, max_size=3)}),
)
wild_prompts = st.one_of(
    st.fixed_dictionaries({"prompt": st.text(max_size=30)}),
    st.fixed_dictionaries({"token_ids": st.lists(st.integers(-5, 300), max_size=20)}),
    st.fixed_dictionaries(
        {
            "messages": st.lists(
                st.fixed_dictionaries(
                    {
                        "role": st.sampled_from(["user", "robot", ""]),
                        "content": st.text(max_size=20),
                    }
                ),
                max_size=3,
            )
        }
    ),
)
good = st.tuples(good_prompts, good_sampling(), good_sparse, st.sampled_from([0, 5, -100, 100]))
wild = st.tuples(wild_prompts, wild_sampling, wild_sparse, st.sampled_from([0, 101, -(2**31)]))


def _offline(llm: LLM, req) -> tuple[str, object]:
    """What the offline API says of the request: ("invalid", field), ("capacity", None) or
    ("ok", token ids)."""
    try:
        args = validate_request(req)
        prompt = args.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], dict):
            prompt = llm.tokenizer.apply_chat_template(
                prompt, tokenize=False, add_generation_prompt=True
            )
        out = llm.generate([prompt], args.sampling_params, args.sparse_config, use_tqdm=False)
        return "ok", out[0]["token_ids"]
    except ValidationError as e:
        return "invalid", e.field
    except CapacityError:
        return "capacity", None


@SETTINGS
@given(case=st.one_of(good, wild))
def test_random_requests_through_grpc(svc, llm, case):
    p, sp, sc, priority = case
    try:
        req = build_request(**p, sampling_params=sp, sparse_config=sc, priority=priority)
    except (ValueError, TypeError):
        return  # not representable on the wire (e.g. an int64 out of range)
    TRIED["requests"] += 1
    want, value = _offline(llm, req)
    TRIED[want] += 1
    with Client(svc.target) as c:
        try:
            events = list(c.stream(req, timeout=CALL_TIMEOUT_S, reattach=False))
        except grpc.RpcError as e:
            assert e.code() != grpc.StatusCode.DEADLINE_EXCEEDED, "the service hung"
            if want == "invalid":
                assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.details()
                assert bad_request_field(e) == value, (e.details(), value)
            elif want == "capacity":
                assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.details()
            else:
                pytest.fail(f"a valid request failed: {e.code()} {e.details()}")
            return
    assert want == "ok", f"the offline API refuses it ({value}) but the service ran it"
    assert list(events[-1].token_ids) == value


@SETTINGS
@given(body=st.binary(max_size=64))
def test_random_bytes_never_crash_the_service(svc, body):
    TRIED["bytes"] += 1
    path = "/dllmserve.v1.DllmService/Generate"
    with grpc.insecure_channel(svc.target) as ch:
        try:
            list(ch.unary_stream(path)(body, timeout=CALL_TIMEOUT_S))
            code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            code = e.code()
    # bytes that happen to decode to a valid request may run; nothing else is allowed
    assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OK), code
    assert all(p.poll() is None for p in [*svc.workers, *(s for s, _ in svc.schedulers)])
