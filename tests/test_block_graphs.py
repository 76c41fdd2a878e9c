"""Block-diffusion steps on the CPU, without a model: every lane stores its K/V at its own
positions, a step whose lanes are all B tokens carries that width (the CUDA graphs' key), and a
graph's padding lanes attend to nothing and store at the last real row's entry, an entry of a
block still being denoised (block_graphs.py)."""

from __future__ import annotations

import torch

from dllmserve.engine.block_batch import build_block_iteration
from dllmserve.engine.block_graphs import _Graph
from dllmserve.engine.kv_cache import KVCache
from tests.test_prefix_cache import LAYERS, PAGE, PROMPT, make, setup, step

HKV, D = 2, 4


def test_every_lane_stores_and_graph_padding_stores_into_the_denoised_block():
    batcher, _ = setup(64)
    reqs = [make("a", PROMPT), make("b", PROMPT[:12])]
    for r in reqs:
        batcher.add(r)
    batcher.admit()
    cache = KVCache(torch.zeros(64, PAGE, HKV, D), torch.zeros(64, PAGE, HKV, D))
    batch = build_block_iteration(reqs, cache, LAYERS, D, PAGE, torch.device("cpu"))
    a = batch.attention
    # a: prompt blocks 0 and 1, then block 2; b: prompt block 0, then block 1 (8 tokens each)
    assert a.n_reuse == 5 and batch.lane_width == 8 and a.kept_len[0].tolist() == [0, 8, 16, 0, 8]
    table = {r.request_id: r.page_tables[0] for r in reqs}
    rows = [("a", p) for p in range(24)] + [("b", p) for p in range(16)]
    want = [[int(table[r][layer, p // PAGE]) * PAGE + p % PAGE for r, p in rows]
            for layer in range(LAYERS)]  # fmt: skip
    assert a.write_slots.tolist() == want
    g = _Graph(lanes=8, width=8, pages=8, n_layers=LAYERS, dev=torch.device("cpu"))
    g.kept_len.fill_(5)  # left by an earlier, wider step
    g.fill(batch)
    t = batch.input_ids.numel()
    assert g.kept_len[:, 5:].eq(0).all() and g.kept_len[:, :5].equal(a.kept_len)
    assert g.write_slots[:, :t].equal(a.write_slots)
    last = a.write_slots[:, t - 1 : t]  # b's last position, in its block being denoised
    assert g.write_slots[:, t:].eq(last).all()
    assert g.input_ids[:t].equal(batch.input_ids)


def test_lane_buckets_end_at_the_bucket_that_holds_the_engine_s_lanes():
    """Both graph kinds key on these: every lane count up to max_lanes has a bucket."""
    from dllmserve.engine.cuda_graphs import lane_buckets, smallest_bucket

    assert lane_buckets(1) == (1,)
    assert lane_buckets(10) == (1, 2, 4, 8, 12)
    assert lane_buckets(12) == (1, 2, 4, 8, 12)
    assert lane_buckets(300)[-1] == 300
    for max_lanes in (1, 3, 10, 64, 100, 300):
        buckets = lane_buckets(max_lanes)
        assert all(smallest_bucket(n, buckets) is not None for n in range(1, max_lanes + 1))


def test_a_refreshed_step_copies_only_its_tokens_into_the_graph():
    """A refreshed (or chained) step keeps the index tensors of the one before, so its replay
    loads only the tokens; a step with new lanes loads everything again."""
    from dllmserve.engine.block_batch import refresh_block_iteration

    batcher, _ = setup(64)
    reqs = [make("a", PROMPT), make("b", PROMPT[:12])]
    for r in reqs:
        batcher.add(r)
    batcher.admit()
    step(batcher, reqs)  # the first step stored the prompts' blocks: the next lanes stay
    cache = KVCache(torch.zeros(64, PAGE, HKV, D), torch.zeros(64, PAGE, HKV, D))
    cpu = torch.device("cpu")
    first = build_block_iteration(reqs, cache, LAYERS, D, PAGE, cpu)
    assert not first.stores_blocks
    g = _Graph(lanes=8, width=8, pages=8, n_layers=LAYERS, dev=cpu)
    g.fill(first)
    t = first.input_ids.numel()
    g.positions.fill_(-1)  # stands for indices that must not be copied again
    refreshed = refresh_block_iteration(first, reqs, cpu)
    refreshed.input_ids = refreshed.input_ids + 1  # the step's new tokens
    g.fill(refreshed)
    assert g.input_ids[:t].equal(refreshed.input_ids) and g.positions.eq(-1).all()
    rebuilt = build_block_iteration(reqs, cache, LAYERS, D, PAGE, cpu)  # new index tensors
    g.fill(rebuilt)
    assert g.positions[:t].equal(rebuilt.positions)
    assert g.write_slots[:, :t].equal(rebuilt.attention.write_slots)
