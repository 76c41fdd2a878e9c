"""Provisional tokens: what each masked position of the active block would be if committed now,
with its confidence, in the step updates of the requests that ask (and only theirs)."""

from __future__ import annotations

import pytest

from dllmserve import SamplingParams, SparseConfig
from dllmserve.engine.engine import Engine

SPARSE = SparseConfig(retention_ratio=0.5, delay_step=1, default_block_len=8)


def params(**kw) -> SamplingParams:
    base = dict(gen_length=16, steps=16, temperature=0.0, seed=7, stop_at_eos=False)
    return SamplingParams(**{**base, **kw})


def run(engine: Engine, requests: dict) -> dict:
    """Add (id -> (prompt, params, sparse, provisional)) and step to the end: id -> updates."""
    for rid, (prompt, p, sparse, prov) in requests.items():
        engine.add_request(rid, prompt, p, sparse, provisional=prov)
    updates: dict = {}
    while engine.has_unfinished():
        for u in engine.step():
            updates.setdefault(u.request_id, []).append(u)
    return updates


def check_proposals(updates, block_length: int, gen_length: int) -> None:
    """Each step proposes every position of its block still masked when it ran, in order; the
    ones it commits get the token it proposed; confidences are probabilities."""
    committed: set[int] = set()
    for u in updates:
        start = u.block_index * block_length
        block = range(start, min(start + block_length, gen_length))
        prov = {p.position: p for p in u.provisional}
        assert [p.position for p in u.provisional] == [q for q in block if q not in committed]
        assert all(0.0 <= p.confidence <= 1.0 for p in u.provisional)
        for pos, tok in zip(u.positions, u.token_ids, strict=True):
            if pos in block:
                assert prov[pos].token_id == tok, (u.step, pos)
        committed.update(u.positions)


def test_proposals_match_the_commits_and_rank_by_confidence(llada_dir):
    """Greedy low_confidence: a position's provisional token at step s is its committed token
    when s commits it, and what s commits are the most confident proposals. A request beside
    it that did not ask gets none, and asking changes no result."""
    engine = Engine.from_pretrained(llada_dir)
    p = params()
    got = run(engine, {"asks": ([1, 2, 3, 4], p, None, True),
                       "quiet": ([5, 6, 7], p, None, False)})  # fmt: skip
    check_proposals(got["asks"], 16, 16)
    for u in got["asks"]:
        chosen = [x.confidence for x in u.provisional if x.position in u.positions]
        others = [x.confidence for x in u.provisional if x.position not in u.positions]
        assert len(chosen) == 1 and all(chosen[0] >= c for c in others)
    assert len(got["asks"][0].provisional) == 16 and len(got["asks"][-1].provisional) == 1
    assert all(u.provisional == [] for u in got["quiet"])
    alone = run(Engine.from_pretrained(llada_dir), {"asks": ([1, 2, 3, 4], p, None, False)})
    assert alone["asks"][-1].output.token_ids == got["asks"][-1].output.token_ids


def test_first_proposal_is_what_a_one_step_request_commits(llada_dir):
    """At step 1 the canvas is all masks whatever the schedule: the 16-step request's proposal
    is exactly what a 1-step request commits at temperature 0 (the sampler's own choice)."""
    prompt = [11, 12, 13]
    many = run(Engine.from_pretrained(llada_dir), {"r": (prompt, params(), None, True)})
    one = run(Engine.from_pretrained(llada_dir), {"r": (prompt, params(steps=1), None, False)})
    assert [p.token_id for p in many["r"][0].provisional] == one["r"][-1].output.token_ids


@pytest.mark.parametrize("fixture", ["llada_dir", "dream_dir"])
def test_proposals_on_sparse_blocks_with_cfg_and_sampling(fixture, request):
    """Sparse blocks of 8 (FULL, SELECT, then REUSE steps chained on the device), temperature
    0.5 and classifier-free guidance (two forwards a step); Dream's shifted logits too."""
    path = request.getfixturevalue(fixture)
    p = params(temperature=0.5, cfg_scale=1.0)
    got = run(Engine.from_pretrained(path), {"r": ([3, 4, 5, 6], p, SPARSE, True)})["r"]
    check_proposals(got, 8, 16)
    assert [u.block_index for u in got] == [0] * 8 + [1] * 8
    assert all(u.forward_passes == 2 for u in got)
    plain = run(Engine.from_pretrained(path), {"r": ([3, 4, 5, 6], p, SPARSE, False)})["r"]
    assert plain[-1].output.token_ids == got[-1].output.token_ids
