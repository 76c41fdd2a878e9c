"""Dream's own sampler, token for token: the engine's "dream" schedule against a plain
full-forward-every-step implementation of `diffusion_generate` (tests/plain_dream.py)."""

from __future__ import annotations

import pytest

from dllmserve import LLM, SamplingParams
from tests.plain_dream import dream_generate
from tests.plain_reference import PlainModel

PROMPTS = [[10, 20, 30, 40, 50], [7, 8, 9, 100, 101, 102, 103, 104, 105]]
ALGS = ("maskgit_plus", "topk_margin", "entropy", "origin")


@pytest.fixture(scope="module")
def dream(dream_dir):
    return LLM(dream_dir), PlainModel(dream_dir)


def generate(llm, gen_length, steps, prompts=PROMPTS, **kw):
    params = SamplingParams(gen_length=gen_length, steps=steps, seed=7, stop_at_eos=False, **kw)
    return [o["token_ids"] for o in llm.generate(prompts, params, use_tqdm=False)]


def plain(m, gen_length, steps, alg, prompts=PROMPTS, **kw):
    return [dream_generate(m, p, gen_length, steps, alg=alg, seed=7, **kw) for p in prompts]


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("gen,steps", [(16, 16), (16, 8), (12, 5), (20, 7), (9, 1)])
def test_greedy_matches_dream_sampler(dream, alg, gen, steps):
    llm, m = dream
    assert generate(llm, gen, steps, remasking=alg) == plain(m, gen, steps, alg)


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("filters", [dict(top_p=0.9), dict(top_k=3), dict(top_p=0.7, top_k=20)])
def test_top_p_and_top_k_match_dream_sampler(dream, alg, filters):
    llm, m = dream
    got = generate(llm, 16, 16, remasking=alg, **filters)
    assert got == plain(m, 16, 16, alg, **filters)


@pytest.mark.parametrize("alg", ALGS)
def test_temperature_and_alg_temp_follow_the_documented_stream(dream, alg):
    """The official code draws from torch's generator; with our counter-hash draws in its place
    the schedule and the selection rules are the same."""
    llm, m = dream
    kw = dict(temperature=0.8, top_p=0.95, alg_temp=0.5)
    assert generate(llm, 16, 12, remasking=alg, **kw) == plain(m, 16, 12, alg, **kw)


def test_the_first_step_at_steps_equal_gen_length_commits_nothing(dream):
    llm, _ = dream
    engine = llm.engine
    engine.add_request("r", PROMPTS[0], SamplingParams(gen_length=16, steps=16, stop_at_eos=False))
    counts = []
    while engine.has_unfinished():
        counts += [len(u.positions) for u in engine.step()]
    assert counts[0] == 0 and counts[-1] >= 1 and sum(counts) == 16 and len(counts) == 16


def test_dream_checkpoints_default_to_their_own_schedule(dream, llada_dir):
    llm, _ = dream
    p = dict(gen_length=16, steps=16, remasking="entropy")
    own = generate(llm, **p)
    assert own == generate(llm, schedule="dream", **p) != generate(llm, schedule="blocks", **p)
    llada = LLM(llada_dir)
    assert generate(llada, 16, 8) == generate(llada, 16, 8, schedule="blocks")


@pytest.mark.parametrize("alg", ["entropy", "origin"])
def test_blocks_under_the_dream_schedule(dream, alg):
    """With a block_length each block runs the schedule over its own steps and masks."""
    llm, m = dream
    got = generate(llm, 20, 10, remasking=alg, block_length=8)
    assert got == plain(m, 20, 10, alg, block_length=8)
