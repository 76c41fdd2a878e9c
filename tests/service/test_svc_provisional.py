"""Provisional tokens over gRPC: a request that asks (StreamOptions.provisional) gets the
step's proposals in every StepUpdate, one that does not gets none, and merged updates carry
their last step's."""

from __future__ import annotations

from dllmserve.client import Client, Completed, StepUpdate

SP = {"gen_length": 16, "steps": 8, "block_length": 8, "temperature": 0.0, "seed": 3,
      "stop_at_eos": False}  # fmt: skip


def steps_of(cluster, **kw) -> tuple[list[StepUpdate], Completed]:
    with Client(cluster.target) as c:
        events = list(c.generate("provisional", sampling_params=SP, **kw))
    assert isinstance(events[-1], Completed)
    return [e for e in events if isinstance(e, StepUpdate)], events[-1]


def test_a_request_that_asks_gets_the_proposals_and_one_that_does_not_gets_none(cluster):
    steps, done = steps_of(cluster, provisional=True, include_token_texts=True)
    assert len(steps) == 8
    committed: set[int] = set()
    for u in steps:
        block = range(u.block_index * 8, u.block_index * 8 + 8)
        prov = {p.position: p for p in u.provisional}
        # every masked position of the step's block, in order: the committed ones with their
        # token and text, all with a probability
        assert list(prov) == [p for p in block if p not in committed]
        assert all(0.0 <= p.confidence <= 1.0 for p in u.provisional)
        for pos, tok, text in zip(u.positions, u.token_ids, u.token_texts, strict=True):
            assert (prov[pos].token_id, prov[pos].text) == (tok, text)
        committed.update(u.positions)
    plain, plain_done = steps_of(cluster)
    assert len(plain) == 8 and all(u.provisional == () for u in plain)
    assert plain_done.token_ids == done.token_ids  # asking changes nothing else


def test_a_merged_update_carries_its_last_steps_proposals(cluster):
    """Blocks mode: one update per block of 4 steps; its proposals are the last step's, the
    two positions that step committed (its block's last masks)."""
    steps, _ = steps_of(cluster, provisional=True, stream_mode="blocks")
    assert [u.step for u in steps] == [4, 8]
    for u in steps:
        assert len(u.positions) == 8 and len(u.provisional) == 2
        last = {p.position: p.token_id for p in u.provisional}
        assert all(dict(zip(u.positions, u.token_ids, strict=True))[p] == t
                   for p, t in last.items())  # fmt: skip
