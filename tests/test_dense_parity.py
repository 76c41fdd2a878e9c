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
    """LLaDA's block schedule, also on Dream (whose own schedule is tests/test_dream_parity.py)."""
    for path in (llada_gqa_dir, dream_dir):
        llm, plain = LLM(path), PlainModel(path)
        params = SamplingParams(gen_length=16, block_length=8, steps=8, temperature=0.3, seed=2,
                                stop_at_eos=False, schedule="blocks")  # fmt: skip
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


EOS_OPTIONS = [
    dict(),
    dict(temperature=0.7),
    dict(cfg_scale=1.0),
    dict(remasking="random"),
    dict(logits_eos_inf=True),
    dict(confidence_eos_eot_inf=True),  # EOS/EOT-topped positions tie at confidence 0
    dict(confidence_eos_eot_inf=True, temperature=0.7),
    dict(logits_eos_inf=True, confidence_eos_eot_inf=True),
]
EOS_PROMPTS = [[10, 20, 30, 40, 50], [7, 8, 9, 100, 101, 102, 103, 104, 105], list(range(60, 75))]


def official_eos(plain, prompt, kw, eot):
    return official_generate(
        plain, prompt, 24, 8, 12, kw.get("temperature", 0.0),
        cfg_scale=kw.get("cfg_scale", 0.0), remasking=kw.get("remasking", "low_confidence"),
        seed=3, eot_id=eot, logits_eos_inf=kw.get("logits_eos_inf", False),
        conf_eos_eot_inf=kw.get("confidence_eos_eot_inf", False),
    )  # fmt: skip


@pytest.fixture(scope="module")
def llada_eos(llada_eos_dir):
    return LLM(llada_eos_dir), PlainModel(llada_eos_dir)


@pytest.mark.parametrize("kw", EOS_OPTIONS)
def test_model_that_ends_its_answers_matches_official(llada_eos, kw):
    """Every option on a model that emits EOS and EOT; ties go to the lower position."""
    llm, plain = llada_eos
    t = llm.engine.tokens
    params = SamplingParams(gen_length=24, block_length=8, steps=12, seed=3, stop_at_eos=False,
                            **kw)  # fmt: skip
    outs = llm.generate(EOS_PROMPTS, params, use_tqdm=False)
    got = [o["token_ids"] for o in outs]
    assert got == [official_eos(plain, p, kw, t.eot) for p in EOS_PROMPTS]
    stops = [x for ids in got for x in ids if x in t.stop]
    assert len(stops) >= 6 and t.eot in stops  # the model really ends its answers
    assert (t.eos in stops) != kw.get("logits_eos_inf", False)


@pytest.mark.parametrize("kw", EOS_OPTIONS)
def test_early_stop_keeps_the_official_tokens_and_fills_what_is_allowed(llada_eos, kw):
    """With stop_at_eos the blocks up to the answer's end are the official sampler's; the rest
    is EOS, or EOT where logits_eos_inf forbids EOS."""
    llm, plain = llada_eos
    t = llm.engine.tokens
    fill = t.eot if kw.get("logits_eos_inf") else t.eos
    params = SamplingParams(gen_length=24, block_length=8, steps=12, seed=3, **kw)
    outs = llm.generate(EOS_PROMPTS, params, use_tqdm=False)
    for prompt, out in zip(EOS_PROMPTS, outs, strict=True):
        ended = 8 * (out["num_steps"] // 4)  # the end of the last block that ran
        want = official_eos(plain, prompt, kw, t.eot)
        assert out["token_ids"][:ended] == want[:ended]
        assert out["token_ids"][ended:] == [fill] * (24 - ended)
        if kw.get("logits_eos_inf"):
            assert t.eos not in out["token_ids"]


def test_an_early_stop_fills_with_a_token_the_options_allow(llada_eos):
    """The second prompt's answer ends in the first block: EOS fills the rest, or EOT when
    logits_eos_inf forbids EOS (the official sampler could never write EOS there)."""
    llm, _ = llada_eos
    t = llm.engine.tokens
    for kw, fill in ((dict(), t.eos), (dict(logits_eos_inf=True), t.eot)):
        params = SamplingParams(gen_length=24, block_length=8, steps=12, seed=3, **kw)
        out = llm.generate(EOS_PROMPTS[1:2], params, use_tqdm=False)[0]
        assert out["num_steps"] == 4 and out["finish_reason"] == "stop"
        assert out["token_ids"][8:] == [fill] * 16 and out["token_ids"][7] in t.stop
