"""The batcher and the requests' transitions with plain requests and no model: admission by
slots, token budget and cache pages, abort, the update after an iteration, the schedule, the
early stop at EOS, and the stable prefix's text. Iterations are simulated: every running
request commits the first `commits_at` masked positions of its block."""

from __future__ import annotations

import numpy as np
import pytest

from dllmserve import SamplingParams, SparseConfig
from dllmserve.engine.batcher import Batcher
from dllmserve.engine.detokenizer import IncrementalDetokenizer
from dllmserve.engine.inputs import ModelLimits, resolve_request
from dllmserve.engine.page_pool import PagePool
from dllmserve.engine.request import Request, SpecialTokens
from dllmserve.errors import CapacityError, ValidationError

MASK, EOS, EOT = 299, 0, 1
TOKENS = SpecialTokens(mask=MASK, eos=EOS, eot=EOT)
SPARSE = SparseConfig(retention_ratio=0.5, delay_step=1, default_block_len=4)


def limits(**kw) -> ModelLimits:
    base = dict(max_len=512, n_layers=2, vocab_size=300, mask_token_id=MASK,
                shifted_logits=False, default_schedule="blocks", max_num_batched_tokens=4096,
                page_size=4, num_cache_pages=1000)  # fmt: skip
    return ModelLimits(**{**base, **kw})


def create_batcher(num_pages=1000, max_num_seqs=8, max_num_batched_tokens=4096) -> Batcher:
    return Batcher(PagePool(num_pages), max_num_seqs, max_num_batched_tokens)


def create_requests(n, prompt_len=8, sparse=None, lim=None, prefix="r", **params) -> list:
    lim = lim or limits()
    p = SamplingParams(**{"gen_length": 8, "steps": 8, "stop_at_eos": False, **params})
    out = []
    for i in range(n):
        ids = [2 + (i + j) % 200 for j in range(prompt_len)]
        spec = resolve_request(lim, p, sparse, prompt_ids=ids)
        out.append(Request(f"{prefix}{i}", ids, spec, seed=i, tokens=TOKENS, shifted=False))
    return out


def iteration(batcher: Batcher, token=lambda req, pos: 100 + pos, now=0.0):
    """One simulated iteration over the running requests: (request, StepResult) pairs."""
    batcher.admit(now)
    reqs = list(batcher.running.values())
    width = max((r.block_span[1] - r.block_span[0] for r in reqs), default=1)
    x0 = np.zeros((len(reqs), width), dtype=np.int64)
    commit = np.zeros((len(reqs), width), dtype=bool)
    for i, r in enumerate(reqs):
        bs, be = r.block_span
        masked = np.flatnonzero(r.canvas[bs:be] == MASK)
        commit[i, masked[: r.commits_at(r.step_in_block)]] = True
        x0[i, : be - bs] = [token(r, bs - r.prompt_len + j) for j in range(be - bs)]
    return batcher.update(reqs, x0, commit, now)


def drain(batcher: Batcher, **kw) -> dict[str, list]:
    out: dict[str, list] = {}
    while batcher.has_unfinished():
        for req, res in iteration(batcher, **kw):
            out.setdefault(req.request_id, []).append((req, res))
    return out


def test_admission_is_fifo_and_bounded_by_slots():
    b = create_batcher(max_num_seqs=2)
    for r in create_requests(5):
        b.add(r)
    b.admit()
    assert list(b.running) == ["r0", "r1"]
    assert [r.request_id for r in b.waiting] == ["r2", "r3", "r4"]
    done = drain(b)
    assert set(done) == {f"r{i}" for i in range(5)}
    for steps in done.values():
        req = steps[-1][0]
        assert req.finish_reason == "length" and req.generated.tolist() == list(range(100, 108))
        assert [res.block_done for _, res in steps] == [False] * 7 + [True]
    assert b.reserved_tokens == 0 and not b.running


def test_the_token_budget_holds_back_the_queue_in_order():
    b = create_batcher(max_num_batched_tokens=40)  # a 16-token request, then a 32-token one
    (small,) = create_requests(1, prompt_len=8, prefix="s")
    (big,) = create_requests(1, prompt_len=24, prefix="b")
    (late,) = create_requests(1, prompt_len=8, prefix="l")
    for r in (small, big, late):
        b.add(r)
    b.admit()
    assert list(b.running) == ["s0"] and b.reserved_tokens == 16
    assert not b.next_fits()  # the big one waits, and the small one behind it waits too (FIFO)
    drain(b)
    assert b.reserved_tokens == 0 and all(r.finished for r in (small, big, late))


def test_cache_pages_are_reserved_at_admission_and_freed_by_abort():
    reqs = create_requests(3, prompt_len=20, sparse=SPARSE)
    need = reqs[0].spec.cache_pages
    assert need > 0 and reqs[0].spec.pages_per_layer
    b = create_batcher(num_pages=2 * need + 1)
    for r in reqs:
        b.add(r)
    b.admit()
    assert list(b.running) == ["r0", "r1"] and b.pool.num_free == 1
    assert sum(len(p) for lane in reqs[0].pages for p in lane) == need
    assert reqs[0].page_tables[0].shape[0] == 2  # one row of pages per layer
    assert b.abort("r0") and not b.abort("r0") and b.pool.num_free == need + 1
    b.admit()
    assert list(b.running) == ["r1", "r2"]
    assert b.abort("r2") and b.abort("r1") and b.pool.num_free == b.pool.num_pages
    assert not b.has_unfinished() and b.reserved_tokens == 0


def test_the_pool_never_hands_out_pages_it_does_not_have():
    pool = PagePool(3)
    assert sorted(pool.allocate(2)) == [0, 1] and pool.num_free == 1
    with pytest.raises(RuntimeError, match="3 pages asked for, 1 free"):
        pool.allocate(3)
    assert pool.num_free == 1


def test_abort_of_a_waiting_request_and_results_of_an_aborted_one():
    b = create_batcher(max_num_seqs=1)
    first, second = create_requests(2)
    b.add(first)
    b.add(second)
    b.admit()
    assert b.has("r1") and b.abort("r1") and not b.has("r1")
    reqs = list(b.running.values())
    b.abort("r0")  # aborted while its iteration was in flight: its results are dropped
    x0 = np.full((1, 8), 5, dtype=np.int64)
    assert b.update(reqs, x0, np.ones((1, 8), dtype=bool), 0.0) == []
    assert first.global_step == 0 and not b.has_unfinished()


def test_uneven_schedule_and_block_transitions():
    """gen 10, block 4, 10 steps: blocks of 4, 4, 2 masks get 4, 3, 3 steps; the short last
    block's third step commits nothing and is the one that ends it."""
    (req,) = create_requests(1, gen_length=10, steps=10, block_length=4)
    assert req.spec.blocks == ((0, 4), (4, 8), (8, 10)) and req.spec.block_steps == (4, 3, 3)
    b = create_batcher()
    b.add(req)
    steps = drain(b)["r0"]
    plan = [(res.block_index, len(res.positions), res.block_done) for _, res in steps]
    assert plan == [(0, 1, False), (0, 1, False), (0, 1, False), (0, 1, True),
                    (1, 2, False), (1, 1, False), (1, 1, True),
                    (2, 1, False), (2, 1, False), (2, 0, True)]  # fmt: skip
    assert req.global_step == 10 and req.finish_reason == "length"


def test_stop_at_eos_fills_the_rest_and_finishes_early():
    (req,) = create_requests(1, gen_length=12, steps=12, block_length=4, stop_at_eos=True)
    b = create_batcher()
    b.add(req)
    answer = [7, 8, EOT, EOS]  # the first block: an answer, its end of turn, then EOS
    steps = drain(b, token=lambda r, pos: answer[pos] if pos < 4 else 50)["r0"]
    req, last = steps[-1]
    assert len(steps) == 4 and req.finish_reason == "stop" and last.block_done
    assert last.positions[1:] == list(range(4, 12)) and last.token_ids[1:] == [EOS] * 8
    assert req.generated.tolist() == answer + [EOS] * 8 and req.answer_length == 2
    assert b.pool.num_free == b.pool.num_pages and not b.running


def test_an_answer_with_text_after_its_stop_runs_to_the_end():
    (req,) = create_requests(1, gen_length=8, steps=8, block_length=4, stop_at_eos=True)
    b = create_batcher()
    b.add(req)
    drain(b, token=lambda r, pos: EOS if pos == 1 else 60)
    assert req.global_step == 8 and req.finish_reason == "stop" and req.answer_length == 1


def test_threshold_ends_a_block_when_it_has_no_masks():
    (req,) = create_requests(1, gen_length=8, steps=8, block_length=4, threshold=0.9)
    assert req.total_steps == 8
    b = create_batcher()
    b.add(req)
    b.admit()
    x0 = np.arange(4, dtype=np.int64)[None] + 10
    ((_, res),) = b.update([req], x0, np.ones((1, 4), dtype=bool), 0.0)  # the whole block at once
    assert res.block_done and res.positions == [0, 1, 2, 3] and req.block_idx == 1


def test_stable_prefix_text_streams_as_deltas():
    """Text comes only from the committed prefix before the first mask, a character split over
    tokens is held back, and the first stop token ends the text."""
    e_acute = list("é".encode())  # two bytes
    (req,) = create_requests(1, gen_length=6, steps=6, block_length=3)
    req.detokenizer = IncrementalDetokenizer(lambda ids: bytes(ids).decode("utf-8", "replace"))
    commits = [(1, ord("b")), (0, ord("a")), (2, e_acute[0]), (3, e_acute[1]), (5, ord("z")),
               (4, EOS)]  # fmt: skip
    deltas = []
    for pos, tok in commits:
        req.commit_step(np.array([tok] * 3), np.arange(3) == pos % 3, 0.0)
        end = req.answer_length if req.answer_length is not None else req.stable_len
        deltas.append(req.detokenizer.update(req.generated, end, req.answer_length is not None))
    assert deltas == ["", "ab", "", "é", "", ""]
    assert req.detokenizer.text == "abé" and req.answer_length == 4
    assert req.finish_reason == "stop"


def test_resolve_request_defaults_and_bounds():
    lim = limits()
    dense = resolve_request(lim, SamplingParams(gen_length=16, steps=16), prompt_ids=[3, 4])
    assert dense.block_length == 16 and dense.pages_per_layer == () and dense.cache_pages == 0
    assert dense.tokens_per_iteration == 18 and dense.lanes == 1
    cfg = resolve_request(lim, SamplingParams(gen_length=16, steps=16, cfg_scale=1.0),
                          SPARSE, prompt_len=10)  # fmt: skip
    assert cfg.block_length == 4 and cfg.lanes == 2 and cfg.tokens_per_iteration == 52
    # 26 tokens, 22 candidates outside a 4-token window, 11 kept at r = 0.5: 3 pages of 4
    assert cfg.pages_per_layer == (3, 3) and cfg.cache_pages == 2 * 6  # two lanes
    unknown = resolve_request(lim, SamplingParams(gen_length=16, steps=16), SPARSE)
    assert unknown.prompt_len is None and unknown.tokens_per_iteration == 17  # a 1-token floor


@pytest.mark.parametrize(
    "kw,prompt,sparse,error,text",
    [
        (dict(max_len=20), [1] * 8, None, "sampling_params.gen_length", "exceeds"),
        ({}, [], None, "prompt", "at least one token"),
        ({}, [1, 300], None, "prompt", "outside [0, 299]"),
        ({}, [1, MASK], None, "prompt", "mask token"),
        (dict(max_num_batched_tokens=10), [1] * 4, None, "CapacityError", "max_num_batched"),
        (dict(num_cache_pages=3), [1] * 40, SPARSE, "CapacityError", "cache pages"),
        ({}, [1], "dense", "sparse_config", "must be SparseConfig"),
        (
            {},
            [1],
            SparseConfig(layer_wise=True, layer_ratios=[0.5] * 3),
            "sparse_config.layer_ratios",
            "one ratio per layer (2)",
        ),
    ],
)
def test_resolve_request_refuses_what_cannot_run(kw, prompt, sparse, error, text):
    with pytest.raises((ValidationError, CapacityError)) as e:
        resolve_request(limits(**kw), SamplingParams(gen_length=16, steps=16), sparse,
                        prompt_ids=prompt)  # fmt: skip
    if error == "CapacityError":
        assert isinstance(e.value, CapacityError)
    else:
        assert e.value.field == error
    assert text in str(e.value)


def test_resolve_request_wants_sampling_params():
    with pytest.raises(ValidationError) as e:
        resolve_request(limits(), {"gen_length": 8}, prompt_ids=[1])
    assert e.value.field == "sampling_params" and "must be SamplingParams" in str(e.value)


def test_resolve_request_with_an_unknown_prompt_refuses_only_what_never_fits():
    lim = limits(max_len=17)
    assert resolve_request(lim, SamplingParams(gen_length=16, steps=16)).prompt_len is None
    with pytest.raises(ValidationError, match="a 1-token prompt"):
        resolve_request(lim, SamplingParams(gen_length=17, steps=17))
