"""Sparse attention: the FULL / SELECT / REUSE machine against a plain dual-cache reference."""

from __future__ import annotations

import pytest
import torch

import dllmserve.kernels as kernels
from dllmserve import LLM, SamplingParams, SparseConfig
from dllmserve.sparse.state import kept_count
from tests.plain_dream import DreamStep
from tests.plain_reference import PlainModel, brute_force_select, sparse_generate

PROMPT = [12, 40, 41, 42, 43, 44, 45, 46, 47, 48, 90, 91, 92]


@pytest.fixture(scope="module")
def llada(llada_dir):
    return LLM(llada_dir), PlainModel(llada_dir)


@pytest.mark.parametrize("delay", [0, 1, 3])
@pytest.mark.parametrize("ratio", [1.0, 0.5])
@pytest.mark.parametrize("head_select", [True, False])
def test_matches_plain_dual_cache(llada, delay, ratio, head_select):
    llm, plain = llada
    cfg = SparseConfig(
        retention_ratio=ratio, delay_step=delay, default_block_len=8, head_select=head_select
    )
    params = SamplingParams(gen_length=24, steps=24, temperature=0.4, seed=3, stop_at_eos=False)
    out = llm.generate([PROMPT], params, sparse_configs=cfg, use_tqdm=False)[0]
    want = sparse_generate(
        plain, PROMPT, 24, 8, 24, ratio, delay, head_select, seed=3, temperature=0.4
    )
    assert out["token_ids"] == want


def test_steps_not_equal_gen_length(llada):
    llm, plain = llada
    cfg = SparseConfig(retention_ratio=0.5, delay_step=1, default_block_len=8)
    params = SamplingParams(gen_length=20, steps=7, stop_at_eos=False)
    out = llm.generate([PROMPT], params, sparse_configs=cfg, use_tqdm=False)[0]
    assert out["token_ids"] == sparse_generate(plain, PROMPT, 20, 8, 7, 0.5, 1)
    assert out["num_steps"] == 7


def test_gqa_and_dream_sparse(llada_gqa_dir, dream_dir):
    for path in (llada_gqa_dir, dream_dir):
        llm, plain = LLM(path), PlainModel(path)
        cfg = SparseConfig(retention_ratio=0.3, delay_step=1, default_block_len=8)
        params = SamplingParams(gen_length=16, steps=16, stop_at_eos=False, schedule="blocks")
        out = llm.generate([PROMPT], params, sparse_configs=cfg, use_tqdm=False)[0]
        assert out["token_ids"] == sparse_generate(plain, PROMPT, 16, 8, 16, 0.3, 1)


@pytest.mark.parametrize("ratio", [1.0, 0.4])
@pytest.mark.parametrize("alg", ["maskgit_plus", "origin"])
def test_dream_schedule_commits_inside_each_block(dream_dir, ratio, alg):
    """Under Dream's schedule a sparse request runs the schedule inside each block (Fast-dLLM's
    Dream); its REUSE steps are chained on the device, `origin`'s random commits included."""
    llm, plain = LLM(dream_dir), PlainModel(dream_dir)
    cfg = SparseConfig(retention_ratio=ratio, delay_step=1, default_block_len=8)
    params = SamplingParams(gen_length=24, steps=18, temperature=0.5, seed=4, remasking=alg,
                            stop_at_eos=False)  # fmt: skip
    out = llm.generate([PROMPT], params, sparse_configs=cfg, use_tqdm=False)[0]
    step = DreamStep(plain, len(PROMPT), alg, temperature=0.5, seed=4)
    assert out["token_ids"] == sparse_generate(plain, PROMPT, 24, 8, 18, ratio, 1, sampler=step)


def test_kept_entries_count_and_brute_force(llada, monkeypatch):
    """At r=0.5 each KV head keeps min(max(1, floor(N_c r)), N_c) entries: the brute-force ones,
    and their K/V really sit in the request's pages."""
    llm, plain = llada
    calls = []
    real = kernels.select_and_store

    def spy(a):
        kept = real(a)
        calls.append(
            (
                a.q_win.clone(),
                a.k_seq.clone(),
                a.v_seq.clone(),
                int(a.win_start[0]),
                int(a.win_len[0]),
                int(a.n_keep[0]),
                kept.clone(),
                a.page_table.clone(),
                a.k_pool.clone(),
                a.v_pool.clone(),
            )
        )
        return kept

    monkeypatch.setattr(kernels, "select_and_store", spy)
    cfg = SparseConfig(retention_ratio=0.5, delay_step=1, default_block_len=8, pool_kernel=3)
    params = SamplingParams(gen_length=16, steps=16, stop_at_eos=False)
    llm.generate([PROMPT], params, sparse_configs=cfg, use_tqdm=False)
    n_layers = plain.nl
    assert len(calls) == 2 * n_layers  # one SELECT per block, every layer
    page = llm.engine.limits.page_size
    for q_win, k_seq, v_seq, ws, wl, n, kept, table, kp, vp in calls:
        n_c = len(k_seq) - wl
        assert n == kept_count(n_c, 0.5) == min(max(1, int(n_c * 0.5)), n_c)
        want = brute_force_select(q_win, k_seq, ws, ws + wl, n, True, 3, plain.nh, plain.nkv)
        for h in range(plain.nkv):
            got = kept[0, h]
            assert (got[:n] >= 0).all() and (got[n:] == -1).all()
            assert got[:n].tolist() == want[h]
            for j, p in enumerate(want[h]):
                slot = kp[table[0, j // page], j % page, h]
                assert torch.equal(slot, k_seq[p, h])
                assert torch.equal(vp[table[0, j // page], j % page, h], v_seq[p, h])


def test_mixed_batch_equals_alone(llada):
    """Dense and differently configured sparse requests in one batch: each as if alone."""
    llm, _ = llada
    prompts = [PROMPT, [5, 6, 7], list(range(30, 52)), PROMPT[:6]]
    cfgs = [
        SparseConfig(retention_ratio=0.3, delay_step=0, default_block_len=8),
        None,
        SparseConfig(retention_ratio=0.7, delay_step=2, default_block_len=4, head_select=False),
        SparseConfig(enabled=False),
    ]
    params = [
        SamplingParams(gen_length=16, steps=16, temperature=0.6, seed=1, stop_at_eos=False),
        SamplingParams(gen_length=12, block_length=4, steps=6, seed=2, stop_at_eos=False),
        SamplingParams(gen_length=16, steps=12, cfg_scale=0.5, seed=3, stop_at_eos=False),
        SamplingParams(gen_length=8, steps=8, temperature=1.0, seed=4, stop_at_eos=False),
    ]
    together = llm.generate(prompts, params, sparse_configs=cfgs, use_tqdm=False)
    for p, sp, c, out in zip(prompts, params, cfgs, together, strict=True):
        alone = llm.generate([p], sp, sparse_configs=c, use_tqdm=False)[0]
        assert out["token_ids"] == alone["token_ids"]


def test_layer_wise_ratios(llada):
    llm, _ = llada
    cfg = SparseConfig(retention_ratio=0.5, layer_wise=True)
    ratios = cfg.ratios_for(4)
    assert abs(sum(ratios) / 4 - 0.5) < 1e-12 and ratios[0] > ratios[-1]
    assert all(0 < r <= 1 for r in SparseConfig(retention_ratio=0.9, layer_wise=True).ratios_for(8))
    explicit = SparseConfig(
        retention_ratio=0.5, layer_wise=True, layer_ratios=[0.9, 0.2], default_block_len=8
    )
    params = SamplingParams(gen_length=16, steps=16, stop_at_eos=False)
    out = llm.generate([PROMPT], params, sparse_configs=explicit, use_tqdm=False)[0]
    assert len(out["token_ids"]) == 16
    n_c = len(PROMPT) + 16 - 8
    page = llm.engine.limits.page_size
    want_pages = -(-kept_count(n_c, 0.9) // page) + -(-kept_count(n_c, 0.2) // page)
    assert out["kv_cache_pages"] == want_pages


def test_sparse_uses_less_cache(llada):
    llm, _ = llada
    params = SamplingParams(gen_length=64, steps=64, stop_at_eos=False)
    prompt = list(range(1, 200))
    full = llm.generate(
        [prompt], params, sparse_configs=SparseConfig(retention_ratio=1.0), use_tqdm=False
    )[0]
    half = llm.generate(
        [prompt], params, sparse_configs=SparseConfig(retention_ratio=0.5), use_tqdm=False
    )[0]
    assert half["kv_cache_bytes"] < 0.6 * full["kv_cache_bytes"]
