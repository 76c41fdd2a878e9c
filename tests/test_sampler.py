"""The batched sampler's per-request options, on hand-made logits."""

from __future__ import annotations

from dataclasses import replace

import torch

from dllmserve.engine.sampler import MODE_ID, SamplingBatch, _filter_top_p_top_k, sample
from dllmserve.kernels.noise import uniform64

V, B = 50, 6


def batch(R: int, **over) -> SamplingBatch:
    base = dict(
        temperature=torch.zeros(R, dtype=torch.float64),
        seed=torch.arange(R, dtype=torch.long),
        step=torch.zeros(R, dtype=torch.long),
        positions=torch.arange(B).expand(R, B).clone(),
        eligible=torch.ones(R, B, dtype=torch.bool),
        k=torch.full((R,), 2, dtype=torch.long),
        transfer_prob=torch.full((R,), float("nan"), dtype=torch.float64),
        alg_temp=torch.zeros(R, dtype=torch.float64),
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
        any_alg_temp=False,
        any_transfer=False,
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


def dream_batch(R: int, mode: str, **over) -> SamplingBatch:
    m = MODE_ID[mode]
    return batch(R, mode=torch.full((R,), m), modes=frozenset({m}), **over)


def test_unset_top_p_removes_nothing_where_the_float32_sum_passes_one():
    """As the official code skips top_p == 1, so does an unset top_p: a request's distribution
    never depends on a filtered neighbour in its batch."""
    lg = logits(1)  # seed 0: the running float32 sum passes 1.0 before the last token
    srt = lg.sort(dim=-1, descending=True).values
    assert (torch.softmax(srt, -1).cumsum(-1) > 1).any()
    kept = _filter_top_p_top_k(lg, torch.zeros(1, 1, 1), torch.zeros(1, dtype=torch.long),
                               torch.ones(1), mask_id=3)  # fmt: skip
    assert torch.equal(kept, lg)


def test_top_k_keeps_every_token_tied_with_the_kth():
    lg = torch.zeros(1, 1, V)
    lg[0, 0, 10:14] = torch.tensor([5.0, 4.0, 4.0, 4.0])
    kept = _filter_top_p_top_k(lg, torch.zeros(1, 1, 1), torch.tensor([2]), torch.ones(1), 3)
    assert torch.isfinite(kept[0, 0]).nonzero().flatten().tolist() == [10, 11, 12, 13]


def test_dream_modes_count_the_mask_token_but_never_pick_it():
    """Dream's probabilities span the whole vocabulary, the mask token (id 3) included; the token
    is the most likely other one, also where top_k = 1 keeps only the mask."""
    lg = torch.zeros(1, B, V)
    lg[0, 0, 3], lg[0, 0, 9] = 6.0, 5.5  # p(9) = 0.35 beside the mask token, 0.83 without it
    lg[0, 1, 8] = 4.0  # p(8) = 0.53
    one = dict(k=torch.ones(1, dtype=torch.long), eligible=torch.arange(B) < 2)
    x0, commit = sample(lg, dream_batch(1, "maskgit_plus", **one), 1, 2, 3)
    assert x0[0, :2].tolist() == [9, 8] and commit[0].nonzero().flatten().tolist() == [1]
    top1 = dict(top_k=torch.ones(1, dtype=torch.long), any_filter=True)
    x0, _ = sample(lg, dream_batch(1, "entropy", **one, **top1), 1, 2, 3)
    assert x0[0, 0] == 9


def test_origin_commits_each_mask_below_its_probability():
    """Dream's `origin`: a mask is committed where its own uniform draw is below the step's
    probability, whatever `k` says; rows without a probability keep their count."""
    lg = logits(2, seed=3)
    prob = torch.tensor([0.5, float("nan")], dtype=torch.float64)
    b = dream_batch(2, "origin", transfer_prob=prob, any_transfer=True)
    _, commit = sample(lg, b, 1, 2, 3)
    u = uniform64(b.seed[:, None], b.step[:, None], b.positions, torch.tensor(V))
    assert torch.equal(commit[0], u[0].float().double() < 0.5)
    assert commit[1].sum() == 2


def test_alg_temp_draws_positions_from_softmax_of_confidence():
    """alg_temp > 0: k positions drawn without replacement with probability softmax(c / T)
    (Gumbel keys from the request's stream): reproducible per seed, all but the top k when T
    is small, spread over the positions when T is large."""
    lg = logits(1, seed=4).expand(64, B, V).clone()
    seeds = torch.arange(64)
    cold = dream_batch(64, "maskgit_plus", seed=seeds, alg_temp=torch.full((64,), 1e-6,
                       dtype=torch.float64), any_alg_temp=True)  # fmt: skip
    top = sample(lg, dream_batch(64, "maskgit_plus", seed=seeds), 1, 2, 3)[1]
    assert torch.equal(sample(lg, cold, 1, 2, 3)[1], top)
    hot = replace(cold, alg_temp=torch.full((64,), 10.0, dtype=torch.float64))
    drawn = sample(lg, hot, 1, 2, 3)[1]
    assert torch.equal(drawn, sample(lg, hot, 1, 2, 3)[1]) and (drawn.sum(-1) == 2).all()
    assert drawn.any(0).all() and not torch.equal(drawn, top)


def test_uniform64_takes_a_plain_int_coordinate():
    """A plain-int vocabulary coordinate (what the sampler passes, instead of uploading a
    tensor mid-step) gives the same bits as the tensor, also where the product wraps."""
    seed = torch.tensor([[0], [7], [2**62]])
    step = torch.tensor([[0], [3], [255]])
    positions = torch.arange(5).expand(3, 5)
    for coordinate in (0, 1, 126464, 126465, 2**40 + 3):
        want = uniform64(seed, step, positions, torch.tensor(coordinate))
        assert torch.equal(uniform64(seed, step, positions, coordinate), want)
