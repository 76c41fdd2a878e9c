"""The batched sampler's per-request options, on hand-made logits."""

from __future__ import annotations

import torch

from dllmserve.engine.sampler import MODE_ID, SamplingBatch, sample

V, B = 50, 6


def batch(R: int, **over) -> SamplingBatch:
    base = dict(
        temperature=torch.zeros(R, dtype=torch.float64),
        seed=torch.arange(R, dtype=torch.long),
        step=torch.zeros(R, dtype=torch.long),
        positions=torch.arange(B).expand(R, B).clone(),
        eligible=torch.ones(R, B, dtype=torch.bool),
        k=torch.full((R,), 2, dtype=torch.long),
        threshold=torch.full((R,), float("nan")),
        mode=torch.zeros(R, dtype=torch.long),
        top_k=torch.zeros(R, dtype=torch.long),
        top_p=torch.ones(R),
        logits_eos_inf=torch.zeros(R, dtype=torch.bool),
        conf_eos_eot_inf=torch.zeros(R, dtype=torch.bool),
        modes=frozenset({0}),
        any_noise=False,
        any_threshold=False,
        any_filter=False,
    )
    base.update(over)
    return SamplingBatch(**base)


def logits(R: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(R, B, V, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_commits_top_k_confident_eligible():
    lg = logits(2)
    elig = torch.tensor([[1, 1, 0, 1, 1, 1], [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    x0, commit = sample(lg, batch(2, eligible=elig), eos_id=1, eot_id=2, mask_id=3)
    lg[..., 3] = -torch.inf
    assert torch.equal(x0, lg.argmax(-1))
    conf = torch.softmax(lg, -1).gather(-1, x0[..., None])[..., 0]
    conf[~elig] = -1
    want0 = set(conf[0].topk(2).indices.tolist())
    assert set(commit[0].nonzero().flatten().tolist()) == want0
    assert commit[1].nonzero().flatten().tolist() == [5]  # k capped by what is eligible


def test_top_k_one_and_tiny_top_p_are_greedy_at_any_temperature():
    lg = logits(2, seed=1)
    hot = torch.full((2,), 5.0, dtype=torch.float64)
    for over in (
        dict(top_k=torch.ones(2, dtype=torch.long)),
        dict(top_p=torch.full((2,), 1e-6)),
    ):
        x0, _ = sample(
            lg, batch(2, temperature=hot, any_noise=True, any_filter=True, **over), 1, 2, 3
        )
        masked = lg.clone()
        masked[..., 3] = -torch.inf
        assert torch.equal(x0, masked.argmax(-1)), over


def test_noise_is_per_request_and_reproducible():
    lg = logits(1, seed=2).expand(3, B, V).clone()
    t = torch.full((3,), 2.0, dtype=torch.float64)
    seeds = torch.tensor([7, 7, 8])
    x0, _ = sample(lg, batch(3, temperature=t, seed=seeds, any_noise=True), 1, 2, 3)
    assert torch.equal(x0[0], x0[1]) and not torch.equal(x0[0], x0[2])


def test_threshold_commits_all_above_and_at_least_one():
    lg = torch.full((2, B, V), -10.0)
    lg[0, :3, 5] = 10.0  # three near-certain positions in row 0; row 1 is uniform
    thr = torch.full((2,), 0.9)
    _, commit = sample(lg, batch(2, threshold=thr, any_threshold=True), 1, 2, 3)
    assert commit[0].nonzero().flatten().tolist() == [0, 1, 2]
    assert commit[1].sum() == 1


def test_dream_modes_rank_by_their_confidence():
    lg = torch.zeros(1, B, V)
    lg[0, 0, 5], lg[0, 0, 6] = 4.0, 3.9  # peaked but a small margin
    lg[0, 1, 7] = 3.0  # less peaked, large margin
    for mode, first in (("maskgit_plus", 0), ("topk_margin", 1), ("entropy", 0)):
        m = MODE_ID[mode]
        b = batch(
            1, mode=torch.tensor([m]), modes=frozenset({m}), k=torch.ones(1, dtype=torch.long)
        )
        _, commit = sample(lg, b, 1, 2, 3)
        assert commit[0].nonzero().flatten().tolist() == [first], mode
