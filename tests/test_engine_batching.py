"""Continuous batching through the step-level interface the service's worker drives."""

from __future__ import annotations

import pytest

from dllmserve import LLM, SamplingParams, SparseConfig
from dllmserve.engine.engine import Engine
from dllmserve.errors import CapacityError

SPARSE = SparseConfig(retention_ratio=0.5, delay_step=1, default_block_len=8)


def params(seed: int, **kw) -> SamplingParams:
    base = dict(gen_length=16, steps=16, temperature=0.5, seed=seed, stop_at_eos=False)
    return SamplingParams(**{**base, **kw})


def run_alone(path, prompt, p, sparse=SPARSE):
    return LLM(path).generate([prompt], p, sparse_configs=sparse, use_tqdm=False)[0]["token_ids"]


def drain(engine: Engine, updates: dict) -> None:
    while engine.has_unfinished():
        for u in engine.step():
            updates.setdefault(u.request_id, []).append(u)


def canvas_from(updates, gen_length: int, mask: int) -> list[int]:
    canvas = [mask] * gen_length
    for u in updates:
        for pos, tok in zip(u.positions, u.token_ids, strict=True):
            assert canvas[pos] == mask, "a position was committed twice"
            canvas[pos] = tok
    return canvas


def test_requests_join_mid_flight(llada_dir):
    engine = Engine.from_pretrained(llada_dir)
    prompts = {"a": [1, 2, 3, 4], "b": list(range(20, 40)), "c": [9, 9, 8]}
    engine.add_request("a", prompts["a"], params(1), SPARSE)
    updates: dict = {}
    for _ in range(3):
        for u in engine.step():
            updates.setdefault(u.request_id, []).append(u)
    engine.add_request("b", prompts["b"], params(2), SPARSE)
    for _ in range(5):
        for u in engine.step():
            updates.setdefault(u.request_id, []).append(u)
    engine.add_request("c", prompts["c"], params(3, gen_length=8, steps=4), None)
    drain(engine, updates)
    for rid, seed in (("a", 1), ("b", 2)):
        final = updates[rid][-1]
        assert final.finished and final.output.token_ids == run_alone(
            llada_dir, prompts[rid], params(seed)
        )
        assert [u.step for u in updates[rid]] == list(range(1, 17))
        assert all(p // 8 == u.block_index for u in updates[rid] for p in u.positions)
        assert canvas_from(updates[rid], 16, engine.tokens.mask) == final.output.token_ids
    assert updates["c"][-1].output.token_ids == run_alone(
        llada_dir, prompts["c"], params(3, gen_length=8, steps=4), None
    )
    assert engine.batcher.pool.num_free == engine.batcher.pool.num_pages


def test_abort_frees_pages_at_once(llada_dir):
    engine = Engine.from_pretrained(llada_dir)
    engine.add_request("x", list(range(1, 60)), params(1), SPARSE)
    engine.add_request("y", [4, 5, 6], params(2), SPARSE)
    engine.step()
    engine.step()
    assert engine.batcher.pool.num_free < engine.batcher.pool.num_pages
    before = engine.batcher.pool.num_free
    assert engine.abort("x")
    assert engine.batcher.pool.num_free > before
    assert not engine.abort("x")
    updates: dict = {}
    drain(engine, updates)
    assert "x" not in updates
    assert updates["y"][-1].output.token_ids == run_alone(llada_dir, [4, 5, 6], params(2))
    assert engine.batcher.pool.num_free == engine.batcher.pool.num_pages


def test_more_requests_than_fit_wait_and_finish(llada_dir):
    prompt = list(range(1, 41))
    probe = Engine.from_pretrained(llada_dir)
    need = probe.make_request("p", prompt, params(0), SPARSE).spec.cache_pages
    engine = Engine.from_pretrained(llada_dir, num_cache_pages=2 * need + 1)
    for i in range(5):
        engine.add_request(f"r{i}", prompt, params(i), SPARSE)
    engine.step()
    assert engine.stats()["running"] == 2 and engine.stats()["waiting"] == 3
    updates: dict = {}
    drain(engine, updates)
    for i in range(5):
        assert updates[f"r{i}"][-1].output.token_ids == run_alone(llada_dir, prompt, params(i))
    assert engine.batcher.pool.num_free == engine.batcher.pool.num_pages


def test_request_that_can_never_fit_is_refused(llada_dir):
    engine = Engine.from_pretrained(llada_dir, num_cache_pages=2, max_num_batched_tokens=64)
    with pytest.raises(CapacityError, match="cache pages"):
        engine.add_request("big", list(range(1, 40)), params(0), SPARSE)
    with pytest.raises(CapacityError, match="max_num_batched_tokens"):
        engine.add_request("long", list(range(1, 60)), params(0), None)
    assert not engine.has_unfinished()


def test_token_budget_limits_concurrency(llada_dir):
    engine = Engine.from_pretrained(llada_dir, max_num_batched_tokens=48)
    for i in range(3):
        engine.add_request(f"r{i}", [1, 2, 3, 4, 5, 6, 7, 8], params(i), None)  # 24 tokens each
    engine.step()
    assert engine.stats()["running"] == 2
    updates: dict = {}
    drain(engine, updates)
    assert len(updates) == 3 and all(u[-1].finished for u in updates.values())


def test_threshold_and_stop_at_eos(llada_dir):
    llm = LLM(llada_dir)
    out = llm.generate(
        [[1, 2, 3]],
        SamplingParams(gen_length=16, steps=16, block_length=8, threshold=0.5, stop_at_eos=False),
        use_tqdm=False,
    )[0]
    assert 2 <= out["num_steps"] <= 16 and llm.engine.tokens.mask not in out["token_ids"]
    strict = llm.generate(
        [[1, 2, 3]],
        SamplingParams(gen_length=16, steps=16, block_length=8, threshold=1.0, stop_at_eos=False),
        use_tqdm=False,
    )[0]
    assert strict["num_steps"] == 16  # nothing beats 1.0: one token per step


def test_stop_at_eos_fills_the_rest(llada_dir, monkeypatch):
    """Once a block ends with the answer finished, the rest is EOS and the request stops."""
    llm = LLM(llada_dir)
    engine = llm.engine
    eos = engine.tokens.eos
    real = engine.model.logits

    def eos_after_four(hidden):
        logits = real(hidden)
        logits[..., eos] = logits.max() + 10  # every position prefers EOS ...
        return logits

    monkeypatch.setattr(engine.model, "logits", eos_after_four)
    p = SamplingParams(gen_length=24, steps=24, block_length=8)
    out = llm.generate([[5, 6, 7]], p, use_tqdm=False)[0]
    assert out["finish_reason"] == "stop"
    assert out["num_steps"] == 8  # one block, then the early stop
    assert out["token_ids"] == [eos] * 24 and out["text"] == ""
    longer = llm.generate(
        [[5, 6, 7]],
        SamplingParams(gen_length=24, steps=24, block_length=8, stop_at_eos=False),
        use_tqdm=False,
    )[0]
    assert longer["num_steps"] == 24


def test_dream_confidence_modes_and_top_p(dream_dir):
    llm = LLM(dream_dir)
    for mode in ("maskgit_plus", "topk_margin", "entropy", "origin"):
        p = SamplingParams(
            gen_length=16,
            steps=8,
            remasking=mode,
            temperature=0.2,
            top_p=0.95,
            top_k=50,
            seed=1,
            stop_at_eos=False,
        )
        a = llm.generate([[3, 4, 5]], p, use_tqdm=False)[0]
        b = llm.generate([[3, 4, 5]], p, use_tqdm=False)[0]
        assert a["token_ids"] == b["token_ids"] and llm.engine.tokens.mask not in a["token_ids"]


def test_chained_reuse_steps_and_abort_in_flight(llada_dir):
    """Inside a block the engine launches the next REUSE step before reading the last one back;
    the tokens are those of a plain run, and aborting a request in flight drops its results."""
    engine = Engine.from_pretrained(llada_dir)
    engine.add_request("keep", [4, 5, 6], params(2), SPARSE)
    engine.add_request("drop", list(range(1, 30)), params(1), SPARSE)
    updates: dict = {}
    while engine._inflight is None:  # FULL, SELECT, then a REUSE step left in flight
        for u in engine.step():
            updates.setdefault(u.request_id, []).append(u)
    assert engine.abort("drop") and engine.has_unfinished()
    drain(engine, updates)
    assert [u.step for u in updates["keep"]] == list(range(1, 17))
    assert updates["keep"][-1].output.token_ids == run_alone(llada_dir, [4, 5, 6], params(2))
    assert all(u.step <= 2 for u in updates["drop"])
    assert engine.batcher.pool.num_free == engine.batcher.pool.num_pages


def test_step_updates_carry_what_the_engine_decided(llada_dir):
    """Block ends, the answer's end and the streamed text come with the updates: the deltas add
    up to the final text, and the answer length is the canvas's first stop token."""
    engine = Engine.from_pretrained(llada_dir)
    p = SamplingParams(gen_length=24, steps=12, block_length=8, temperature=0.8, seed=5)
    engine.add_request("t", "Repeat exactly: ab", p)
    engine.add_request("s", [7, 8, 9], p, SPARSE)
    updates: dict = {}
    drain(engine, updates)
    stops = engine.tokens.stop
    for ups in updates.values():
        final = ups[-1]
        out = final.output
        assert "".join(u.text_delta for u in ups) == out.text
        first = next((i for i, t in enumerate(out.token_ids) if t in stops), None)
        assert final.answer_length == first
        assert (
            final.finish_reason == out.finish_reason == ("stop" if first is not None else "length")
        )
        assert all(u.block_length == 8 for u in ups) and final.block_done
        ends = [u.step for u in ups if u.block_done]
        assert ends == [4, 8, 12][: len(ends)] and ends[-1] == final.step
        seen = [u.answer_length for u in ups if u.answer_length is not None]
        assert len(set(seen)) <= 1  # once known, the answer's end never moves


def test_dream_and_llada_schedules_share_iterations(dream_dir):
    """Requests on Dream's schedule (every alg, alg_temp, top_p / top_k) and on LLaDA's join one
    engine at different steps and run in the same iterations; each gets the tokens it gets
    alone (bit-exact on CPU fp32)."""
    mix = {
        "entropy": (params(1, remasking="entropy", temperature=0.0), None),
        "origin": (params(2, remasking="origin", top_k=20), SPARSE),
        "alg_temp": (params(3, remasking="maskgit_plus", alg_temp=0.4, top_p=0.9), None),
        "margin": (params(4, remasking="topk_margin", steps=9, block_length=8), SPARSE),
        "blocks": (params(5, schedule="blocks", block_length=8), None),
        "blocks-origin": (params(6, schedule="blocks", remasking="origin", top_k=5), SPARSE),
    }
    engine = Engine.from_pretrained(dream_dir)
    updates: dict = {}
    for i, (rid, (p, sparse)) in enumerate(mix.items()):
        engine.add_request(rid, [3 + i, 4, 5, 6], p, sparse)
        for u in engine.step():
            updates.setdefault(u.request_id, []).append(u)
    drain(engine, updates)
    for i, (rid, (p, sparse)) in enumerate(mix.items()):
        alone = run_alone(dream_dir, [3 + i, 4, 5, 6], p, sparse)
        assert updates[rid][-1].output.token_ids == alone, rid
        assert canvas_from(updates[rid], 16, engine.tokens.mask) == alone


def test_newcomer_steps_first_behind_the_iteration_in_flight(llada_dir):
    """A request added while another runs gets its first update from the very next call (its
    first step runs alone, behind the chained REUSE step in flight); both requests still end
    with the tokens of a run on their own."""
    engine = Engine.from_pretrained(llada_dir)
    engine.add_request("old", [4, 5, 6], params(2), SPARSE)
    updates: dict = {}
    while engine._inflight is None:  # FULL, SELECT, then a REUSE step left in flight
        for u in engine.step():
            updates.setdefault(u.request_id, []).append(u)
    engine.add_request("new", list(range(1, 30)), params(1), SPARSE)
    first = engine.step()
    assert [(u.request_id, u.step) for u in first if u.request_id == "new"] == [("new", 1)]
    assert any(u.request_id == "old" for u in first), "the step in flight is collected too"
    for u in first:
        updates.setdefault(u.request_id, []).append(u)
    drain(engine, updates)
    for rid, prompt, seed in (("old", [4, 5, 6], 2), ("new", list(range(1, 30)), 1)):
        assert [u.step for u in updates[rid]] == list(range(1, 17))
        assert updates[rid][-1].output.token_ids == run_alone(llada_dir, prompt, params(seed))


def test_warm_up_leaves_a_cold_engines_state(llada_dir):
    """warm_up runs its two requests to the end: afterwards nothing runs or waits, every page is
    free, and a request (without a seed of its own) gets the tokens it gets from a cold engine."""
    warm, cold = Engine.from_pretrained(llada_dir), Engine.from_pretrained(llada_dir)
    launched: list[tuple[str, ...]] = []  # the request ids of every iteration launched
    launch = warm.runner.launch
    warm.runner.launch = lambda reqs, batch: (
        launched.append(tuple(r.request_id for r in reqs)) or launch(reqs, batch)
    )
    warm.warm_up()
    alone, joining = ("warm-up-alone",), ("warm-up-joining",)
    # the shapes it exists for: one request alone, the newcomer's first step alone, then both
    assert launched[:3] == [alone] * 3 and joining in launched
    assert launched.index(joining) < launched.index(alone + joining)
    assert not warm.has_unfinished() and warm._inflight is None
    assert warm.batcher.pool.num_free == warm.batcher.pool.num_pages
    p = params(None, temperature=0.7)
    outputs = []
    for engine in (warm, cold):
        engine.add_request("r", [5, 6, 7], p, SPARSE)
        updates: dict = {}
        drain(engine, updates)
        outputs.append(updates["r"][-1].output.token_ids)
    assert outputs[0] == outputs[1]


def test_warm_up_that_cannot_fit_is_skipped(llada_dir, caplog):
    """A cache too small for the warm-up's requests: it says so and leaves the engine as it was
    (the worker still starts)."""
    engine = Engine.from_pretrained(llada_dir, num_cache_pages=1)
    with caplog.at_level("WARNING", logger="dllmserve.engine.engine"):
        engine.warm_up()
    assert "warm-up skipped" in caplog.text
    assert not engine.has_unfinished() and engine.batcher.pool.num_free == 1
