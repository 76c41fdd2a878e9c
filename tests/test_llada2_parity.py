"""LLaDA2 through `LLM` equals the official `generate` (LLaDA2.0) and LLaDA2.1's editing loop on
the official model (a plain reference without cache, tests/plain_llada2.py), token for token up to
the answer's first EOS, with EOS after it; on tiny random checkpoints in the official layout.
The engine runs the exact block K/V cache; a batch changes no request's tokens."""

from __future__ import annotations

import pytest

from dllmserve import LLM, SamplingParams
from dllmserve.testing.tiny_llada2 import write_tiny_llada2
from tests.plain_llada2 import PlainLlada2, generate, generate_editing

MID = [45, 46, 47, 88, 99, 60, 70, 80, 5, 6, 7]  # ends mid-block for B = 4 and 8
EDGE = [5, 6, 7, 8, 9, 60, 70, 80]  # ends on a block boundary for B = 4 and 8


@pytest.fixture(scope="module")
def l2(tmp_path_factory):
    path = write_tiny_llada2(tmp_path_factory.mktemp("l2"), seed=2, logit_scale=12.0)
    return LLM(path, num_cache_pages=512, page_size=4), PlainLlada2(path)


@pytest.fixture(scope="module")
def l2_eos(tmp_path_factory):
    """EOS likely: answers end inside the canvas."""
    path = write_tiny_llada2(
        tmp_path_factory.mktemp("l2e"), seed=2, logit_scale=12.0, eos_scale=4.0
    )
    return LLM(path, num_cache_pages=512, page_size=4), PlainLlada2(path)


def engine_tokens(llm: LLM, prompts, **kw) -> list[list[int]]:
    return [o["token_ids"] for o in llm.generate(prompts, SamplingParams(**kw), use_tqdm=False)]


def official(ref: PlainLlada2, prompt, G, **kw) -> list[int]:
    """The official answer, EOS-filled to gen_length as the engine returns it."""
    ans = generate(ref, prompt, gen_length=G, **kw)
    return ans + [ref.eos_id] * (G - len(ans))


CASES = [  # (prompt, gen_length, block_length, steps_per_block, threshold, minimal_topk)
    (MID, 16, 4, 4, 0.9, 1),
    (EDGE, 16, 4, 2, 0.9, 1),
    (MID, 19, 8, 8, 0.5, 1),  # gen_length not a multiple of the block
    (EDGE, 13, 8, 4, 0.3, 2),
    (MID, 10, 4, 8, None, 1),  # more steps than a block has tokens: empty steps at the end
    (EDGE, 12, 8, 8, None, 3),  # minimal_topk caps the steps at gen_length // 3 = 4
]


@pytest.mark.parametrize("prompt,G,B,S,T,K", CASES)
def test_llada2_equals_official_generate(l2, prompt, G, B, S, T, K):
    llm, ref = l2
    want = official(ref, prompt, G, block_length=B, steps=S, threshold=2.0 if T is None else T,
                    minimal_topk=K)  # fmt: skip
    got = engine_tokens(llm, [prompt], gen_length=G, block_length=B, steps_per_block=S,
                        threshold=T, minimal_topk=K)  # fmt: skip
    assert got == [want]


@pytest.mark.parametrize("early", [False, True])
@pytest.mark.parametrize("prompt,B", [(MID, 4), (EDGE, 8)])
def test_eos_stop_and_early_stop(l2_eos, prompt, B, early):
    llm, ref = l2_eos
    ans = generate(ref, prompt, gen_length=24, block_length=B, steps=4, threshold=0.5,
                   eos_early_stop=early)  # fmt: skip
    assert ref.eos_id in ans and len(ans) < 24  # the answer ends inside the canvas
    out = llm.generate([prompt], SamplingParams(gen_length=24, block_length=B, steps_per_block=4,
                       threshold=0.5, eos_early_stop=early), use_tqdm=False)[0]  # fmt: skip
    assert out["token_ids"] == ans + [ref.eos_id] * (24 - len(ans))
    assert out["finish_reason"] == "stop"


@pytest.mark.parametrize("prompt,B,T,E", [(MID, 4, 0.5, 0.3), (EDGE, 8, 0.9, 0.5)])
def test_llada21_editing_equals_official(l2, prompt, B, T, E):
    llm, ref = l2
    ans = generate_editing(ref, prompt, gen_length=16, block_length=B, threshold=T,
                           editing_threshold=E)  # fmt: skip
    got = engine_tokens(llm, [prompt], gen_length=16, block_length=B, steps_per_block=B,
                        threshold=T, editing_threshold=E)  # fmt: skip
    assert got == [ans + [ref.eos_id] * (16 - len(ans))]


def test_batch_invariance_bit_exact(l2):
    """Requests at different blocks and steps in one packed forward get their lone tokens."""
    llm, _ = l2
    prompts = [MID, EDGE, MID[:3], EDGE + MID]
    kw = dict(gen_length=16, block_length=4, steps_per_block=4, threshold=0.6)
    alone = [engine_tokens(llm, [p], **kw)[0] for p in prompts]
    assert engine_tokens(llm, prompts, **kw) == alone
    edit = dict(kw, editing_threshold=0.4)
    assert engine_tokens(llm, prompts[:2], **edit) == [engine_tokens(llm, [p], **edit)[0]
                                                       for p in prompts[:2]]  # fmt: skip


def test_prefix_cache_hit_changes_no_token(l2):
    """A second request sharing the first's full prompt blocks reads their cached K/V and gets
    the tokens an engine without prefix caching gives."""
    llm, _ = l2
    shared = EDGE + MID[:8]  # two full blocks of 8
    prompts = [shared + [3, 4], shared + [9, 10, 11]]
    kw = dict(gen_length=12, block_length=8, steps_per_block=4, threshold=0.6)
    first = engine_tokens(llm, prompts[:1], **kw)
    before = llm.engine.batcher.prefix.hit_blocks
    second = engine_tokens(llm, prompts[1:], **kw)
    assert llm.engine.batcher.prefix.hit_blocks == before + 2
    stats = llm.engine.stats()
    assert stats["prefix_cache_hit_rate"] > 0 and stats["prefix_cached_pages"] > 0
    plain = LLM(l2[1].path, num_cache_pages=512, page_size=4, enable_prefix_caching=False)
    assert plain.engine.batcher.prefix is None
    assert engine_tokens(plain, prompts, **kw) == first + second


def test_recomputing_the_prefix_gives_the_same_tokens(l2):
    """The benchmark baseline's mode (the official cost: the canvas from 0 every step)."""
    llm, ref = l2
    eng = llm.engine
    kw = dict(gen_length=16, block_length=4, steps_per_block=4, threshold=0.9)
    eng.add_request("recompute", MID, SamplingParams(**kw))
    eng.batcher.waiting[-1].recompute_prefix = True
    out = None
    while eng.has_unfinished():
        out = next((u.output for u in eng.step() if u.output), out)
    assert out.token_ids == official(ref, MID, 16, block_length=4, steps=4, threshold=0.9)


def test_sampling_above_zero_is_seeded_and_batch_invariant(l2):
    """temperature / top_k / top_p: a request's draws come from its own seeded stream."""
    llm, _ = l2
    params = SamplingParams(temperature=0.8, seed=3, top_k=20, top_p=0.9, gen_length=16,
                            block_length=8, steps_per_block=4, threshold=0.9)  # fmt: skip
    prompts = [EDGE, MID]
    alone = [llm.generate([p], params, use_tqdm=False)[0]["token_ids"] for p in prompts]
    assert [o["token_ids"] for o in llm.generate(prompts, params, use_tqdm=False)] == alone
    greedy = engine_tokens(llm, prompts, gen_length=16, block_length=8, steps_per_block=4,
                           threshold=0.9)  # fmt: skip
    assert alone != greedy
