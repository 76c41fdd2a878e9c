"""On a GPU: every step of a block-diffusion request replays a CUDA graph, the steps that store
a finished block's K/V included (a prefix-cache hit's first step: its uncached prompt block and
its first denoised block; a later block's first step: the block just finished and the new one),
and the tokens are those of an eager engine without prefix caching, on a tiny fp32 checkpoint
so rounding cannot hide a wrong store. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from dllmserve import LLM, SamplingParams
from dllmserve.testing.tiny_llada2 import write_tiny_llada2

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SHARED = [45, 46, 47, 88, 99, 60, 70, 80, 5, 6, 7, 8, 9, 61, 71, 81]  # two full blocks of 8
PROMPTS = [SHARED + [3, 4, 5], SHARED + [20, 21, 22, 23, 24, 25, 26, 27, 9, 10, 11]]
PARAMS = SamplingParams(gen_length=12, block_length=8, steps_per_block=4, threshold=0.9)


def tokens(llm: LLM, prompt: list[int]) -> dict:
    return llm.generate([prompt], PARAMS, use_tqdm=False)[0]


def test_store_steps_replay_graphs_and_a_hit_changes_no_token(tmp_path):
    path = write_tiny_llada2(tmp_path / "l2", seed=2, logit_scale=12.0)
    kw = dict(device="cuda", dtype=torch.float32, num_cache_pages=512, page_size=8)
    plain = LLM(path, enforce_eager=True, enable_prefix_caching=False, **kw)
    want = [tokens(plain, p)["token_ids"] for p in PROMPTS]
    llm = LLM(path, **kw)
    graphs = llm.engine.runner.block_graphs
    prefix = llm.engine.batcher.prefix
    first = tokens(llm, PROMPTS[0])
    replays, hits = graphs.replays, prefix.hit_blocks
    second = tokens(llm, PROMPTS[1])
    assert prefix.hit_blocks == hits + 2  # the shared blocks came from the cache
    # every step of the hit replayed a graph, its first (which stores its third prompt block)
    # and its second block's first (which stores the first denoised block) included
    assert graphs.replays - replays == second["num_steps"]
    assert any(lanes >= 2 for lanes, _, _ in graphs.graphs)
    assert [first["token_ids"], second["token_ids"]] == want


def test_warm_up_captures_a_hits_graphs_before_traffic(tmp_path):
    """After `Engine.warm_up`, a request alone that hits the prefix cache captures nothing:
    its first step (a stored block and its first denoised one), its later steps and its next
    block's first step replay graphs captured before traffic (the model's block length, 32)."""
    path = write_tiny_llada2(tmp_path / "l2", seed=2, logit_scale=12.0)
    llm = LLM(path, device="cuda", dtype=torch.float32, num_cache_pages=512, page_size=8)
    runner = llm.engine.runner
    llm.engine.warm_up()
    shared = [(7 * i) % 200 + 3 for i in range(64)]  # two full blocks of 32
    params = SamplingParams(gen_length=40, steps_per_block=4, threshold=0.9)
    llm.generate([shared + [5, 6, 7]], params, use_tqdm=False)
    captures, hits = runner.graph_captures(), llm.engine.batcher.prefix.hit_blocks
    own = [(11 * i) % 200 + 3 for i in range(35)]  # a third full block, then a tail
    llm.generate([shared + own], params, use_tqdm=False)
    assert llm.engine.batcher.prefix.hit_blocks == hits + 2
    assert runner.graph_captures() == captures
