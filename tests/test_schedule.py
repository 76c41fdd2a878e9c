"""The two commit schedules: LLaDA's even split and Dream's timesteps, in Dream's float32."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dllmserve.engine.schedule import block_plan, dream_commits, dream_timesteps

STEPS = [*range(1, 70), 127, 128, 511, 2048]


@pytest.mark.parametrize("eps", [1e-3, 0.0, 0.37, 1.0])
def test_dream_timesteps_are_torch_linspace_value_for_value(eps):
    for steps in STEPS:
        want = torch.linspace(1, eps, steps + 1).numpy()
        assert np.array_equal(np.array(dream_timesteps(steps, eps), dtype=np.float32), want)


def test_dream_commits_follow_the_float32_formula():
    for steps in STEPS[:40]:
        for masks in (steps, steps + 5, 3 * steps):
            ts, left, want = torch.linspace(1, 1e-3, steps + 1), masks, []
            for i in range(steps):
                n = torch.tensor(left) / 1  # float32, as the official mask count
                k = int(n) if i == steps - 1 else int(n * (1 - ts[i + 1] / ts[i]))
                want.append(k)
                left -= k
            assert list(dream_commits(masks, steps, 1e-3)) == want


def test_one_step_per_token_commits_nothing_first_and_the_rest_last():
    plan = dream_commits(64, 64, 1e-3)
    assert plan[0] == 0 and sum(plan) == 64 and plan[-1] >= 1 and max(plan) <= 2


def test_block_plans():
    assert block_plan("blocks", 10, 4, 1e-3) == block_plan("blocks", 10, 4, 0.5)
    assert block_plan("blocks", 10, 4, 1e-3).commits == (3, 3, 2, 2)
    assert block_plan("dream", 10, 4, 1e-3).transfer_probs is None
    origin = block_plan("dream", 10, 4, 1e-3, independent=True)
    assert origin.commits == (0, 0, 0, 10)  # the last step commits whatever is left
    p = origin.transfer_probs
    assert all(0 < x < 1 for x in p[:3]) and math.isnan(p[3])
    assert p[0] == pytest.approx((1 - 1e-3) / 4, rel=1e-6)
