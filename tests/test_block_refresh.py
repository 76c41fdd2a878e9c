"""Mid-block block-diffusion steps refresh the previous iteration's batch instead of rebuilding
it (`refresh_block_iteration`): over whole generations (threshold and not, LLaDA2.1's edits,
sampling above zero, mixed block lengths, a request joining mid-way and one finishing early,
structured outputs beside free requests), every refreshed batch (the structured outputs' rows
included) equals `build_block_iteration` of the same step field by field, the
engine's tokens equal those of an engine that rebuilds every step, and any change of lanes
(another request, block, page table or a lane storing K/V) rebuilds."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dllmserve import LLM, SamplingParams
from dllmserve.engine import model_runner
from dllmserve.engine.block_batch import (
    block_signature,
    build_block_iteration,
    same_lanes,
)
from dllmserve.engine.kv_cache import KVCache
from dllmserve.structured import StructuredOutput
from dllmserve.testing.tiny_llada2 import write_tiny_llada2
from tests.test_prefix_cache import PROMPT, make, setup, step

MID = [45, 46, 47, 88, 99, 60, 70, 80, 5, 6, 7]
EDGE = [5, 6, 7, 8, 9, 60, 70, 80]


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    path = write_tiny_llada2(tmp_path_factory.mktemp("l2"), seed=2, logit_scale=12.0)
    return LLM(path, num_cache_pages=512, page_size=4)


def assert_same(a: object, b: object, where: str = "batch") -> None:
    """Field by field: tensors of the same dtype, shape and device, torch.equal (NaN = NaN);
    the K/V cache the same object; anything else ==."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert (a.dtype, a.shape, a.device) == (b.dtype, b.shape, b.device), where
        if a.dtype.is_floating_point:
            assert torch.equal(a.isnan(), b.isnan()), where
            a, b = a.nan_to_num(), b.nan_to_num()
        assert torch.equal(a, b), where
    elif isinstance(a, KVCache):
        assert a is b, where
    elif isinstance(a, dict):  # ConstrainedRows.on: device tensors by name
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k}]")
    elif dataclasses.is_dataclass(a) and not isinstance(a, type):
        assert type(a) is type(b), where
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    else:
        assert a == b, where


@pytest.fixture
def checked(llm, monkeypatch):
    """Every refresh the engine does is checked against a full build of the same step; the
    list counts them."""
    runner, done = llm.engine.runner, []
    real = model_runner.refresh_block_iteration

    def refresh(prev, reqs, device):
        got = real(prev, reqs, device)
        cfg = runner.model.cfg
        want = build_block_iteration(
            reqs, runner.cache, cfg.n_layers, cfg.head_dim, runner.cache.k.shape[1], device
        )
        assert_same(got, want)
        done.append(len(reqs))
        return got

    monkeypatch.setattr(model_runner, "refresh_block_iteration", refresh)
    return done


def run(
    llm: LLM, plan: list[tuple[int, str, list[int], dict]], refresh: bool, chain: bool = False
) -> dict:
    """Generate: each (engine step, id, prompt, params) is added before that step; returns the
    token ids by request id. Chained steps (tests/test_block_chain.py) are off unless asked
    for: a chained step is neither refreshed nor built."""
    eng = llm.engine
    eng.runner.refresh_blocks, eng.runner.chain_blocks = refresh, chain
    tag, outs, n = f"-{refresh}-{id(plan)}", {}, 0
    try:
        while n == 0 or eng.has_unfinished() or any(at >= n for at, *_ in plan):
            for at, rid, prompt, kw in plan:
                if at == n:
                    eng.add_request(rid + tag, prompt, SamplingParams(**kw))
            for u in eng.step():
                if u.output is not None and u.finished:
                    outs[u.request_id[: -len(tag)]] = list(u.output.token_ids)
            n += 1
    finally:
        eng.runner.refresh_blocks = eng.runner.chain_blocks = True
    return outs


T = dict(gen_length=16, block_length=4, steps_per_block=4, threshold=0.6)
# prompts of 8 and 16 tokens start their blocks together: with a block's steps fixed (no
# threshold) their steps share lanes, and refresh batched
S8 = dict(gen_length=24, block_length=8, steps_per_block=8, threshold=None)
REGEX = StructuredOutput(regex="[a-z]{2,5}-[0-9]{2}")
CHOICE = StructuredOutput(choice=["yes", "no", "maybe"])
DIGITS = StructuredOutput(json_schema={"type": "array", "items": {"type": "integer",
                          "minimum": 0, "maximum": 9}})  # fmt: skip
PLANS = {
    "threshold, none, a joiner, an early finish": [
        (0, "a", EDGE, dict(S8, steps_per_block=5)),  # 2, 2, 2, 1, 1 commits a block
        (0, "b", EDGE + EDGE, dict(S8, steps_per_block=5, gen_length=8)),  # finishes first
        (0, "c", EDGE[::-1], dict(S8, steps_per_block=5, threshold=0.99)),
        (6, "d", MID, T),  # joins mid-way
    ],
    "editing and plain": [
        (0, "a", EDGE, dict(S8, threshold=0.6, editing_threshold=0.4)),
        (0, "b", EDGE + EDGE, dict(S8, threshold=0.9, editing_threshold=0.5)),
        (0, "c", EDGE[::-1], S8),
        (3, "d", MID[:5], dict(T, editing_threshold=0.3)),
    ],
    "sampling, mixed block lengths": [
        (0, "a", EDGE, dict(S8, temperature=0.8, seed=3, top_k=20, top_p=0.9)),
        (0, "b", EDGE + EDGE, dict(S8, temperature=0.5, seed=4)),
        (0, "c", MID, dict(T, block_length=8, steps_per_block=8, threshold=None)),
        (2, "d", EDGE + MID, dict(T, gen_length=24, steps_per_block=8, seed=5, temperature=0.5)),
    ],
    "structured outputs and free": [
        (0, "a", EDGE, dict(S8, structured_output=REGEX)),
        (0, "b", EDGE + EDGE, dict(S8, temperature=0.7, seed=3, structured_output=CHOICE)),
        (0, "c", EDGE[::-1], S8),
        (2, "d", MID, dict(T, structured_output=DIGITS)),  # the first block: 3 prompt columns
    ],
}


@pytest.mark.parametrize("name", list(PLANS))
def test_refreshed_batches_equal_full_builds_and_tokens_are_unchanged(llm, checked, name):
    plan = PLANS[name]
    rebuilt = run(llm, plan, refresh=False)
    assert checked == []  # refresh off: every step built
    refreshed = run(llm, plan, refresh=True)
    assert len(checked) >= 5 and max(checked) >= 3  # refreshed often, batched steps too
    assert refreshed == rebuilt and set(rebuilt) == {rid for _, rid, _, _ in plan}


def test_refresh_matches_requests_alone(llm):
    """The refreshed engine's batched tokens are each request's tokens alone."""
    plan = PLANS["threshold, none, a joiner, an early finish"]
    together = run(llm, plan, refresh=True)
    for _, rid, prompt, kw in plan:
        assert run(llm, [(0, rid, prompt, kw)], refresh=False)[rid] == together[rid]


def test_any_change_of_lanes_rebuilds():
    batcher, _ = setup(64)
    a, b = make("a", PROMPT), make("b", PROMPT[:12])
    for r in (a, b):
        batcher.add(r)
    batcher.admit()
    assert block_signature([a, b]) is None  # their prompt blocks are stored this step
    step(batcher, [a, b])
    sig = block_signature([a, b])
    assert sig is not None and same_lanes(sig, block_signature([a, b]))
    assert not same_lanes(sig, block_signature([b, a]))  # order
    assert not same_lanes(sig, block_signature([a]))  # a request left
    assert not same_lanes(sig, None) and not same_lanes(None, None)
    twin = make("a", PROMPT)  # the same id, another request object
    twin.set_pages(a.pages)
    twin.kv_upto = a.kv_upto
    assert not same_lanes(sig, block_signature([twin, b]))
    a.set_pages(a.pages)  # re-admitted: a new page-table array
    assert not same_lanes(sig, block_signature([a, b]))
    sig = block_signature([a, b])
    a._start_block(a.block_idx + 1)  # its next block: the finished one is stored this step
    assert block_signature([a, b]) is None
    a.kv_upto = a.block_span[0]
    assert not same_lanes(sig, block_signature([a, b]))  # another block
