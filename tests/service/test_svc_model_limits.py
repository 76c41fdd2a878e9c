"""The model's limits, checked by the scheduler before a request is queued.

A worker registers its engine's `ModelLimits`; the scheduler runs `resolve_request` against
them, so a request that no worker of its model could ever run is refused at once, with the
error `LLM.generate` gives for it, and nothing of it reaches Redis or a worker. Through real
gRPC and HTTP on a scheduler + one CPU worker with a small budget (600 tokens per iteration,
40 cache pages) serving the tiny model (512 tokens, 2 layers, 262 token ids in 320 embedding rows).
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import httpx
import pytest
import redis.asyncio as aioredis
from http_util import add_gateway
from svc_util import Cluster, bad_request_field, wait_for

from dllmserve import LLM
from dllmserve.broker import redis_keys as rk
from dllmserve.broker.workers import decode_limits, encode_limits
from dllmserve.client import Accepted, Client, build_request
from dllmserve.engine.engine import Engine
from dllmserve.engine.inputs import ModelLimits
from dllmserve.errors import CapacityError, ValidationError
from dllmserve.scheduler.served import ServedModels
from dllmserve.scheduler.validation import check_fits, validate_request

BUDGET = {"max_num_batched_tokens": 600, "num_cache_pages": 40}
WORKER_FLAGS = ("--max-num-batched-tokens", "600", "--num-cache-pages", "40")
BAD = grpc.StatusCode.INVALID_ARGUMENT
FULL = grpc.StatusCode.RESOURCE_EXHAUSTED
CHAT = [{"role": "user", "content": "hi"}]
# retention 1.0 keeps every candidate: with one 32-token block, ceil(prompt / 16) pages per layer
KEEP_ALL = {"retention_ratio": 1.0}


def _sp(**kw) -> dict:
    return {"gen_length": 8, "steps": 8, "seed": 1, **kw}


@dataclass(frozen=True)
class Case:
    kw: dict  # build_request's keyword arguments
    code: grpc.StatusCode | None = None  # None: accepted, and it runs to completion
    field: str = ""  # the field INVALID_ARGUMENT names
    by: str = "scheduler"  # who refuses it: the scheduler (nothing queued) or the worker
    # a text prompt counts as one token at the scheduler: its message gives that lower bound
    # where LLM.generate gives the exact count (the field is the same)
    lower_bound: bool = False


TOKENS2 = {"token_ids": [5, 6]}
CASES = [
    # prompt + gen_length <= the model's 512 tokens
    Case({**TOKENS2, "sampling_params": {"gen_length": 510, "steps": 1}}),
    Case({**TOKENS2, "sampling_params": {"gen_length": 511, "steps": 1}}, BAD,
         "sampling_params.gen_length"),
    Case({"prompt": "x", "sampling_params": {"gen_length": 511, "steps": 1}}),
    Case({"prompt": "x", "sampling_params": {"gen_length": 512, "steps": 1}}, BAD,
         "sampling_params.gen_length", lower_bound=True),
    Case({"messages": CHAT, "sampling_params": {"gen_length": 512, "steps": 1}}, BAD,
         "sampling_params.gen_length", lower_bound=True),
    # 5 tokens: only the worker, which tokenizes, knows it is too long
    Case({"prompt": "hello", "sampling_params": {"gen_length": 510, "steps": 1}}, BAD,
         "sampling_params.gen_length", by="worker"),
    # tokens per iteration <= 600: (prompt + gen_length) x 2 lanes with cfg
    Case({**TOKENS2, "sampling_params": {"gen_length": 298, "steps": 1, "cfg_scale": 1.0}}),
    Case({**TOKENS2, "sampling_params": {"gen_length": 299, "steps": 1, "cfg_scale": 1.0}},
         FULL),
    # cache pages <= 40: 2 layers x ceil(320 / 16)
    Case({"token_ids": [5] * 320, "sampling_params": _sp(gen_length=32, steps=2),
          "sparse_config": KEEP_ALL}),
    Case({"token_ids": [5] * 321, "sampling_params": _sp(gen_length=32, steps=2),
          "sparse_config": KEEP_ALL}, FULL),
    # one retention ratio per layer (2)
    Case({"prompt": "hi", "sampling_params": _sp(),
          "sparse_config": {"layer_wise": True, "layer_ratios": [0.5, 0.7]}}),
    Case({"prompt": "hi", "sampling_params": _sp(),
          "sparse_config": {"layer_wise": True, "layer_ratios": [0.5] * 3}}, BAD,
         "sparse_config.layer_ratios"),
    Case({**TOKENS2, "sampling_params": _sp(),
          "sparse_config": {"layer_wise": True, "layer_ratios": [0.5]}}, BAD,
         "sparse_config.layer_ratios"),
    # at least one step per block: 8 tokens in blocks of 2
    Case({"prompt": "hi", "sampling_params": _sp(block_length=2, steps=4)}),
    Case({"prompt": "hi", "sampling_params": _sp(block_length=2, steps=3)}, BAD,
         "sampling_params.steps"),
    # delay_step below the block length
    Case({"prompt": "hi", "sampling_params": _sp(),
          "sparse_config": {"default_block_len": 8, "delay_step": 7}}),
    Case({"prompt": "hi", "sampling_params": _sp(),
          "sparse_config": {"default_block_len": 8, "delay_step": 8}}, BAD,
         "sparse_config.delay_step"),
    # default_block_len up to the model's length
    Case({"prompt": "hi", "sampling_params": _sp(),
          "sparse_config": {"default_block_len": 512}}),
    Case({"prompt": "hi", "sampling_params": _sp(),
          "sparse_config": {"default_block_len": 513}}, BAD, "sparse_config.default_block_len"),
    # top_k up to the vocabulary
    Case({"prompt": "hi", "sampling_params": _sp(top_k=262, temperature=1.0)}),
    Case({"prompt": "hi", "sampling_params": _sp(top_k=263, temperature=1.0)}, BAD,
         "sampling_params.top_k"),
    # token ids inside the tokenizer's vocabulary (not the padded embedding), never the mask
    # token (258)
    Case({"token_ids": [261], "sampling_params": _sp()}),
    Case({"token_ids": [5, 262], "sampling_params": _sp()}, BAD, "prompt"),
    Case({"token_ids": [5, 319], "sampling_params": _sp()}, BAD, "prompt"),
    Case({"token_ids": [5, 258], "sampling_params": _sp()}, BAD, "prompt"),
]  # fmt: skip


@pytest.fixture(scope="module")
def svc(tmp_path_factory, tiny_model):
    c = Cluster(tmp_path_factory.mktemp("limits"), tiny_model)
    try:
        c.add_scheduler()
        c.worker = c.add_worker(*WORKER_FLAGS)
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def llm(tiny_model):
    return LLM(str(tiny_model), device="cpu", **BUDGET)


def _added(c: Cluster) -> int:
    """Entries ever added to the pending stream (deleted ones included)."""
    return c.client.xinfo_stream(rk.PENDING)["entries-added"]


def _offline(llm: LLM, req) -> tuple[grpc.StatusCode, str, str]:
    """What LLM.generate answers for the same request: (code, field, message)."""
    args = validate_request(req)
    prompt = args.prompt
    if isinstance(prompt, list) and isinstance(prompt[0], dict):
        prompt = llm.tokenizer.apply_chat_template(prompt, tokenize=False,
                                                   add_generation_prompt=True)  # fmt: skip
    try:
        llm.generate([prompt], args.sampling_params, args.sparse_config, use_tqdm=False)
    except ValidationError as e:
        return BAD, e.field, str(e)
    except CapacityError as e:
        return FULL, "", str(e)
    raise AssertionError("LLM.generate ran it")


def _worker_saw(c: Cluster, rid: str) -> bool:
    return rid in Path(c.worker.log_path).read_text(errors="replace")


def test_every_model_bound_is_checked_before_queueing(svc, llm):
    with Client(svc.target) as c:
        for i, case in enumerate(CASES):
            rid = f"limit-{i:02d}"
            req = build_request(**case.kw, request_id=rid)
            before = _added(svc)
            if case.code is None:
                done = list(c.stream(req, timeout=120, reattach=False))[-1]
                want = req.sampling_params.gen_length
                assert len(done.token_ids) == want, (case, done)
                assert _added(svc) == before + 1
                continue
            with pytest.raises(grpc.RpcError) as e:
                list(c.stream(req, timeout=120, reattach=False))
            err = e.value
            assert err.code() == case.code, (case, err.details())
            assert bad_request_field(err) == case.field, (case, err.details())
            queued = case.by == "worker"
            assert _added(svc) == before + queued, case
            assert bool(svc.client.exists(rk.req_key(rid))) == queued, case
            assert _worker_saw(svc, rid) == queued, case
            code, field, message = _offline(llm, req)
            assert (code, field) == (err.code(), case.field)
            if case.lower_bound:
                assert err.details().startswith(f"{field}: a 1-token prompt + gen_length")
            else:
                assert err.details() == message, case
        # the service is unharmed
        assert len(c.generate_text("still fine", sampling_params=_sp()).token_ids) == 8


def test_the_worker_registers_its_engines_limits(svc, llm):
    registered = svc.worker_hash(svc.worker.worker_id)["limits"]
    assert decode_limits(registered) == llm.engine.limits


def test_the_gateway_answers_400_naming_the_field(svc):
    base = add_gateway(svc)
    before = _added(svc)
    body = {"model": svc.model.name, "prompt": "hi", "max_tokens": 8, "steps": 8,
            "temperature": 1.0, "top_k": 263}  # fmt: skip
    resp = httpx.post(base + "/v1/completions", json=body, timeout=60)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["param"] == "top_k" and err["message"].startswith("top_k: must be in [1, 262]")
    assert _added(svc) == before


def test_without_a_registered_worker_the_request_is_queued_and_the_worker_checks(make_cluster):
    c = make_cluster()
    c.add_scheduler("--worker-wait", "120")  # the request waits for the worker added below
    req = build_request(token_ids=[5, 6], request_id="early", sampling_params=_sp(),
                        sparse_config={"layer_wise": True, "layer_ratios": [0.5] * 3})  # fmt: skip
    events: list = []
    errors: list = []

    def run() -> None:
        try:
            with Client(c.target) as cl:
                events.extend(cl.stream(req, timeout=120, reattach=False))
        except grpc.RpcError as e:
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    wait_for(lambda: c.req("early").get("status") == rk.QUEUED, what="queued")
    c.add_worker()
    t.join(120)
    assert [type(e) for e in events] == [Accepted]
    (err,) = errors
    assert err.code() == BAD and bad_request_field(err) == "sparse_config.layer_ratios"
    assert "one ratio per layer (2)" in err.details()
    # once the scheduler has read the registration, it refuses the same request itself
    tries = iter(range(1000))

    def refused_by_the_scheduler() -> bool:
        req.request_id = f"later-{next(tries)}"
        with Client(c.target) as cl, pytest.raises(grpc.RpcError) as e:
            list(cl.stream(req, timeout=60, reattach=False))
        assert e.value.code() == BAD and bad_request_field(e.value) == "sparse_config.layer_ratios"
        return not c.client.exists(rk.req_key(req.request_id))

    wait_for(refused_by_the_scheduler, what="the scheduler to read the registration")


# --- the pieces, against a real redis-server ------------------------------------------------

SMALL = ModelLimits(max_len=512, n_layers=2, vocab_size=320, mask_token_id=258,
                    shifted_logits=False, default_schedule="blocks", max_num_batched_tokens=600,
                    page_size=16, num_cache_pages=40)  # fmt: skip
BIG = replace(SMALL, num_cache_pages=4096)


def test_registered_limits_round_trip_and_unreadable_ones_are_none():
    engine = Engine.from_random_shape("tiny", device="cpu", num_cache_pages=64)
    raw = encode_limits(engine.limits)
    assert decode_limits(raw) == engine.limits and decode_limits(raw.encode()) == engine.limits
    good = json.loads(encode_limits(SMALL))
    assert decode_limits(json.dumps({**good, "added_later": 1})) == SMALL  # a newer worker
    for bad in [None, "", b"not json", "[]", "1",
                json.dumps({k: v for k, v in good.items() if k != "n_layers"}),  # older worker
                json.dumps({**good, "n_layers": 2.0}), json.dumps({**good, "n_layers": "2"}),
                json.dumps({**good, "n_layers": True}), json.dumps({**good, "page_size": 0}),
                json.dumps({**good, "mask_token_id": -1}),
                json.dumps({**good, "shifted_logits": 0}),
                json.dumps({**good, "default_schedule": "fast"}),
                json.dumps({**good, "default_schedule": 1})]:  # fmt: skip
        assert decode_limits(bad) is None, bad
    assert decode_limits(json.dumps({**good, "mask_token_id": 0})).mask_token_id == 0


def test_limits_of_a_model_are_its_ready_workers_most_generous_first(rserver, r):
    def register(wid: str, model: str, state: str, limits: str) -> None:
        r.sadd(rk.WORKERS, wid)
        r.hset(rk.worker_key(wid), mapping={"model": model, "state": state, "limits": limits})

    register("w1", "m", "ready", encode_limits(SMALL))
    register("w2", "m", "ready", encode_limits(BIG))
    register("w3", "m", "ready", encode_limits(SMALL))  # the same limits count once
    register("w4", "m", "draining", encode_limits(replace(BIG, num_cache_pages=10**6)))
    register("w5", "m", "ready", "")  # a model-free engine: nothing to check against
    register("w6", "m", "ready", "{not json")  # unreadable: as if it registered none
    register("w7", "other", "ready", encode_limits(replace(SMALL, max_len=64)))
    r.sadd(rk.WORKERS, "gone")  # its heartbeat key expired

    async def read():
        client = aioredis.Redis.from_url(rserver.url)
        try:
            served = ServedModels(client, 3600.0)
            return [await served.limits_of(m) for m in ("m", "other", "nobody")]
        finally:
            await client.aclose()

    assert asyncio.run(read()) == [[BIG, SMALL], [replace(SMALL, max_len=64)], []]


def test_a_request_is_refused_only_when_no_worker_could_run_it():
    req = build_request(token_ids=[5] * 321, sampling_params=_sp(gen_length=32, steps=2),
                        sparse_config=KEEP_ALL)  # fmt: skip
    args = validate_request(req)
    check_fits(args, [])  # no worker registered: the worker checks
    check_fits(args, [BIG, SMALL])  # fits the big one
    with pytest.raises(CapacityError, match="needs 42 cache pages; the pool holds 40"):
        check_fits(args, [SMALL])
    tight = replace(SMALL, num_cache_pages=41)
    with pytest.raises(CapacityError, match="the pool holds 41"):  # the first one's error
        check_fits(args, [tight, SMALL])
    text = validate_request(build_request("a long text", sampling_params={"gen_length": 511,
                                                                        "steps": 1}))  # fmt: skip
    check_fits(text, [SMALL])  # one token as far as the scheduler knows: the worker decides
    with pytest.raises(ValidationError, match="a 1-token prompt"):
        check_fits(replace(text, prompt="x" * 10), [replace(SMALL, max_len=511)])
