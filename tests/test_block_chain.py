"""Mid-block block-diffusion steps whose commit count is known in advance (no threshold, edits
or early stop; structured outputs included) are chained: the next step is built on the device
from the one in flight (`chain_block_iteration`) and launched before that one is read back, so
the host's bookkeeping overlaps the forward. Every chained batch equals the full build of its
step once the step before it is applied, the tokens equal those of an engine that never
chains, and aborting a request while a chained step is in flight leaves the others' tokens
alone."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dllmserve import LLM, SamplingParams
from dllmserve.engine import model_runner
from dllmserve.engine.block_batch import BlockIterationBatch, build_block_iteration
from dllmserve.engine.block_request import BlockRequest
from dllmserve.structured import StructuredOutput
from dllmserve.testing.tiny_llada2 import write_tiny_llada2
from tests.test_block_refresh import EDGE, MID, S8, assert_same, run
from tests.test_block_refresh import PLANS as REFRESH_PLANS
from tests.test_prefix_cache import make

PLANS = {
    "fixed commits: aligned, sampled, a joiner, an early finish": [
        (0, "a", EDGE, S8),
        (0, "b", EDGE + EDGE, dict(S8, temperature=0.8, seed=3, top_k=20)),
        (0, "c", EDGE[::-1], dict(S8, steps_per_block=5)),  # 2, 2, 2, 1, 1 commits a block
        (0, "d", EDGE + EDGE, dict(S8, gen_length=8)),  # finishes first
        (5, "e", MID, dict(S8, temperature=0.5, seed=4)),  # joins mid-way
    ],
    **REFRESH_PLANS,  # thresholds, edits, structured outputs: chained only where none is in a batch
}


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    path = write_tiny_llada2(tmp_path_factory.mktemp("l2"), seed=2, logit_scale=12.0)
    return LLM(path, num_cache_pages=512, page_size=4)


@pytest.fixture
def checked(llm, monkeypatch):
    """Each chained batch, when its results are read back (the host state then is the one
    before its step), is checked against a full build of that step; the list holds each one's
    request count and whether structured outputs were among them, whose committed tokens are
    compared as the chained step found them (its own sampling has recorded its commits in
    them since)."""
    eng, runner = llm.engine, llm.engine.runner
    made: list[tuple[BlockIterationBatch, object]] = []
    done: list[tuple[int, bool]] = []
    real_chain, real_collect = model_runner.chain_block_iteration, eng._collect

    def chain(*args):
        batch = real_chain(*args)
        constraint = batch.sampling.constraint
        made.append((batch, None if constraint is None else constraint.fixed))
        return batch

    def collect(flight):
        for batch, fixed in made:
            if flight.batch is not batch:
                continue
            cfg = runner.model.cfg
            want = build_block_iteration(
                flight.reqs, runner.cache, cfg.n_layers, cfg.head_dim, runner.cache.k.shape[1],
                runner.model.device,
            )  # fmt: skip
            got = batch
            if fixed is not None:
                sampling = replace(batch.sampling, constraint=replace(
                    batch.sampling.constraint, fixed=fixed))  # fmt: skip
                got = replace(batch, sampling=sampling)
            assert_same(got, want)
            done.append((len(flight.reqs), fixed is not None))
        return real_collect(flight)

    monkeypatch.setattr(model_runner, "chain_block_iteration", chain)
    monkeypatch.setattr(eng, "_collect", collect)
    return done


@pytest.mark.parametrize("name", list(PLANS))
def test_chained_batches_equal_full_builds_and_tokens_are_unchanged(llm, checked, name):
    plan = PLANS[name]
    plain = run(llm, plan, refresh=True, chain=False)
    assert checked == []
    chained = run(llm, plan, refresh=True, chain=True)
    assert chained == plain and set(plain) == {rid for _, rid, _, _ in plan}
    if name.startswith("fixed commits"):
        assert len(checked) >= 10 and max(n for n, _ in checked) >= 4  # batched steps too
    if name.startswith("structured"):
        assert any(constrained for _, constrained in checked)  # beside free rows too


def test_abort_while_a_chained_step_is_in_flight(llm):
    eng = llm.engine
    keep, drop = SamplingParams(**S8), SamplingParams(**dict(S8, temperature=0.7, seed=1))
    eng.add_request("keep", EDGE, keep)
    eng.add_request("drop", EDGE + EDGE, drop)
    outs = {}
    while eng._inflight is None:  # the prompt blocks' step, then a chained step in flight
        assert eng.has_unfinished()
        eng.step()
    assert isinstance(eng._inflight.batch, BlockIterationBatch)
    assert eng.abort("drop")
    while eng.has_unfinished():
        for u in eng.step():
            assert u.request_id == "keep"
            if u.finished:
                outs[u.request_id] = list(u.output.token_ids)
    alone = run(llm, [(0, "keep", EDGE, S8)], refresh=True, chain=False)
    assert outs == alone
    batcher = eng.batcher  # every page free, or the prefix cache's and idle
    assert batcher.pool.num_free + batcher.prefix.evictable_pages() == batcher.pool.num_pages


def planned(**kw) -> BlockRequest:
    """A request at its first block (its 8 prompt tokens fill block 0; block 1 is masked)."""
    return make("r", EDGE, params=SamplingParams(**dict(S8, **kw)))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({}, True),
        ({"threshold": 0.9}, False),  # the tokens decide how many commit
        ({"editing_threshold": 0.5, "threshold": 0.9}, False),
        ({"eos_early_stop": True}, False),  # the tokens decide when it ends
        ({"structured_output": StructuredOutput(regex="[a-z]{3}")}, True),  # the DP picks
        # which tokens, not how many
        ({"steps_per_block": 1}, False),  # the running step is the block's last
    ],
)
def test_which_steps_plan_the_next_without_their_tokens(change, expected):
    r = planned(**change)
    assert r.next_step_planned() is expected


def test_a_block_with_no_mask_left_after_the_step_is_not_planned():
    r = planned(steps_per_block=4)  # 2 commits a step over 8 masks
    bs, be = r.block_span
    r.canvas[bs : be - 3] = 5  # 3 masks left: one more step of 2 leaves one
    assert r.next_step_planned()
    r.canvas[be - 3] = 5  # 2 masks left: this step commits both
    assert not r.next_step_planned()
