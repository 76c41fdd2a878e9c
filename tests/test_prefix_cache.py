"""Prefix caching of block-diffusion prompts without a model: full prompt blocks hashed by
content and position (chained), their pages adopted once stored, shared by a later request with
the same leading blocks (which skips their prefill), reference counted, and evicted least
recently used when the pool needs pages; blocks that straddle pages are never cached."""

from __future__ import annotations

import numpy as np

from dllmserve import SamplingParams
from dllmserve.engine.batcher import Batcher
from dllmserve.engine.block_request import BlockRequest
from dllmserve.engine.inputs import ModelLimits, resolve_request
from dllmserve.engine.page_pool import PagePool
from dllmserve.engine.prefix_cache import PrefixCache, block_hashes
from dllmserve.engine.request import SpecialTokens

MASK, EOS = 299, 0
TOKENS = SpecialTokens(mask=MASK, eos=EOS, eot=None)
LAYERS, PAGE, B = 2, 4, 8


def make(
    rid: str, prompt: list[int], block: int = B, params: SamplingParams | None = None
) -> BlockRequest:
    lim = ModelLimits(max_len=512, n_layers=LAYERS, vocab_size=300, mask_token_id=MASK,
                      shifted_logits=False, default_schedule="blocks",
                      max_num_batched_tokens=4096, page_size=PAGE, num_cache_pages=1000,
                      block_diffusion=True, default_block_length=block)  # fmt: skip
    params = params or SamplingParams(gen_length=8, steps_per_block=8, stop_at_eos=False)
    return BlockRequest(rid, prompt, resolve_request(lim, params, prompt_ids=prompt), seed=0,
                        tokens=TOKENS, shifted=False)  # fmt: skip


def step(batcher: Batcher, reqs: list[BlockRequest]) -> None:
    """One iteration that commits nothing (only the K/V bookkeeping moves)."""
    z = np.zeros((len(reqs), B), dtype=np.int64)
    batcher.update(reqs, z, z.astype(bool), 0.0)


def setup(pages: int) -> tuple[Batcher, PrefixCache]:
    pool = PagePool(pages)
    cache = PrefixCache(pool, PAGE)
    return Batcher(pool, 8, 4096, cache), cache


PROMPT = list(range(1, 21))  # 20 tokens: two full blocks of 8, then a tail of 4


def test_hashes_chain_content_and_position():
    a, b = block_hashes(PROMPT, B), block_hashes(PROMPT[:16] + [9, 9], B)
    assert len(a) == 2 and a == b  # only full blocks count
    swapped = PROMPT[8:16] + PROMPT[:8]
    assert block_hashes(swapped, B)[1] != a[1]  # same tokens, other position: another key
    assert block_hashes(PROMPT, 4)[:2] != a[:2]


def test_second_request_shares_the_stored_blocks_and_skips_their_prefill():
    batcher, cache = setup(64)
    a = make("a", PROMPT)
    batcher.add(a)
    batcher.admit()
    assert a.write_blocks() == [(0, 8), (8, 16)] and cache.hit_rate == 0.0
    step(batcher, [a])  # its first forward stored both prompt blocks
    assert a.kv_upto == 16 and cache.cached_pages == 2 * LAYERS * (B // PAGE)
    b = make("b", PROMPT[:16] + [50, 51, 52])
    batcher.add(b)
    batcher.admit()
    assert b.kv_upto == 16 and b.write_blocks() == []  # no prefill: both blocks cached
    assert b.page_tables[0][:, :4].tolist() == a.page_tables[0][:, :4].tolist()
    assert cache.hit_rate == 2 / 4
    free = batcher.pool.num_free
    batcher.abort("a")  # the shared pages stay: b and the cache hold them
    assert batcher.pool.num_free == free + LAYERS * (a.spec.pages_per_layer[0] - 4)
    batcher.abort("b")
    assert cache.cached_pages == 8 and cache.evictable_pages() == 8


def test_unreferenced_blocks_are_evicted_lru_when_the_pool_needs_pages():
    batcher, cache = setup(24)  # a request needs 2 layers x 8 pages (4 blocks of 8)
    a = make("a", PROMPT)
    batcher.add(a)
    batcher.admit()
    step(batcher, [a])
    batcher.abort("a")
    assert cache.cached_pages == 8 and batcher.pool.num_free == 16
    c = make("c", [7] * 20)  # nothing in common: 16 fresh pages, 16 free: no eviction
    batcher.add(c)
    batcher.admit()
    assert c.request_id in batcher.running and cache.cached_pages == 8
    step(batcher, [c])  # c stores its blocks too (the cache holds them while c runs)
    d = make("d", [8] * 20)
    batcher.add(d)
    assert not batcher.next_fits()  # 0 free + 8 evictable (a's blocks) < 16
    batcher.abort("c")  # now c's 8 cached pages are unreferenced too
    assert batcher.next_fits()
    batcher.admit()
    assert cache.match(block_hashes(PROMPT, B)) == []  # a's blocks, the oldest, went first
    assert len(cache.match(block_hashes([7] * 20, B))) == 2


def test_blocks_straddling_pages_are_not_cached():
    batcher, cache = setup(64)
    a = make("a", list(range(1, 13)), block=6)  # 6 % page_size 4 != 0
    batcher.add(a)
    batcher.admit()
    step(batcher, [a])
    assert cache.cached_pages == 0 and cache.queried_blocks == 0


def test_page_counts_follow_every_change():
    """cached_pages and evictable_pages are kept as entries are adopted, shared, released and
    evicted; they equal the sums over the entries at every point."""
    batcher, cache = setup(32)  # a request needs 2 layers x 8 pages

    def check() -> None:
        entries = list(cache._entries.values())
        assert cache.cached_pages == sum(e.n_pages for e in entries)
        idle = [e for e in entries if e.refs == 0]
        assert cache.evictable_pages() == sum(e.n_pages for e in idle)
        assert cache.evictable_pages(idle[:1]) == sum(e.n_pages for e in idle[1:])

    a, b = make("a", PROMPT), make("b", PROMPT)  # the same blocks: b's stay private
    for r in (a, b):
        batcher.add(r)
    batcher.admit()
    step(batcher, [a, b])
    check()
    batcher.abort("b")
    c = make("c", PROMPT[:16] + [1, 2])  # shares a's two blocks
    batcher.add(c)
    batcher.admit()
    assert c.request_id in batcher.running
    check()
    for rid in ("a", "c"):
        batcher.abort(rid)
        check()
    assert cache.cached_pages == 8 and batcher.pool.num_free == 24
    for rid, tok in (("d", 5), ("e", 6)):  # e needs 16 pages: 8 free, 8 evicted
        batcher.add(make(rid, [tok] * 20))
        batcher.admit()
        assert rid in batcher.running
        check()
    assert cache.cached_pages == 0
