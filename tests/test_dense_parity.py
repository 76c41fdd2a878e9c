"""Dense generation equals the official sampler (a plain full-forward-every-step loop)."""

from __future__ import annotations

import pytest

from dllmserve import LLM, SamplingParams
from tests.plain_reference import PlainModel, official_generate

PROMPTS = [[10, 20, 30, 40, 50], [7, 8, 9, 100, 101, 102, 103, 104, 105]]


@pytest.fixture(scope="module")
def llada(llada_dir):
    return LLM(llada_dir), PlainModel(llada_dir)


@pytest.mark.parametrize(
    "gen,block,steps",
    [(16, 16, 16), (16, 8, 8), (24, 8, 12), (16, 4, 8), (20, 8, 7), (12, 5, 6)],
)
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_matches_official_sampler(llada, gen, block, steps, temperature):
    llm, plain = llada
    params = SamplingParams(
        gen_length=gen,
        block_length=block,
        steps=steps,
        temperature=temperature,
        seed=11,
        stop_at_eos=False,
    )
    outs = llm.generate(PROMPTS, params, use_tqdm=False)
    for prompt, out in zip(PROMPTS, outs, strict=True):
        want = official_generate(plain, prompt, gen, block, steps, temperature, seed=11)
        assert out["token_ids"] == want
        assert out["num_steps"] == steps


@pytest.mark.parametrize("temperature", [0.0, 0.5])
def test_cfg_matches_official(llada, temperature):
    llm, plain = llada
    params = SamplingParams(
        gen_length=16,
        block_length=8,
        steps=8,
        temperature=temperature,
        cfg_scale=1.5,
        seed=5,
        stop_at_eos=False,
    )
    out = llm.generate([PROMPTS[0]], params, use_tqdm=False)[0]
    want = official_generate(plain, PROMPTS[0], 16, 8, 8, temperature, cfg_scale=1.5, seed=5)
    assert out["token_ids"] == want
    assert out["num_forward_passes"] == 16  # two lanes per step


def test_random_remasking_and_eos_options(llada):
    llm, plain = llada
    eot = llm.engine.tokens.eot
    for kw in (
        dict(remasking="random"),
        dict(logits_eos_inf=True),
        dict(confidence_eos_eot_inf=True),
        dict(confidence_eos_eot_inf=True, temperature=0.7),
    ):
        params = SamplingParams(
            gen_length=16, block_length=8, steps=8, seed=9, stop_at_eos=False, **kw
        )
        out = llm.generate([PROMPTS[1]], params, use_tqdm=False)[0]
        want = official_generate(
            plain,
            PROMPTS[1],
            16,
            8,
            8,
            kw.get("temperature", 0.0),
            remasking=kw.get("remasking", "low_confidence"),
            seed=9,
            eot_id=eot,
            logits_eos_inf=kw.get("logits_eos_inf", False),
            conf_eos_eot_inf=kw.get("confidence_eos_eot_inf", False),
        )
        assert out["token_ids"] == want, kw


def test_gqa_and_dream_match(llada_gqa_dir, dream_dir):
    for path in (llada_gqa_dir, dream_dir):
        llm, plain = LLM(path), PlainModel(path)
        params = SamplingParams(
            gen_length=16, block_length=8, steps=8, temperature=0.3, seed=2, stop_at_eos=False
        )
        out = llm.generate([PROMPTS[0]], params, use_tqdm=False)[0]
        assert out["token_ids"] == official_generate(plain, PROMPTS[0], 16, 8, 8, 0.3, seed=2)


def test_batch_composition_does_not_change_tokens(llada):
    """A request's tokens depend only on its prompt, params and seed (bit-exact on CPU fp32)."""
    llm, _ = llada
    p = SamplingParams(
        gen_length=16, block_length=8, steps=8, temperature=0.9, seed=4, stop_at_eos=False
    )
    alone = llm.generate([PROMPTS[0]], p, use_tqdm=False)[0]["token_ids"]
    others = [[3, 4, 5], list(range(60, 90)), PROMPTS[1]]
    mixed = llm.generate(others[:1] + [PROMPTS[0]] + others[1:], p, use_tqdm=False)
    assert mixed[1]["token_ids"] == alone
