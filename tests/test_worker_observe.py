"""The worker's Observer: a call of engine.step() far slower than the recent ones of its phase
is logged with what it ran (a first-use compile or capture, or a stall, can then be found)."""

from __future__ import annotations

import logging

from dllmserve.logs import EVENT_ATTR
from dllmserve.worker.observe import SLOW_FACTOR, SLOW_FLOOR_S, Observer


def test_an_iteration_far_past_the_average_is_logged(caplog):
    obs = Observer("m", dict, "w1")
    with caplog.at_level(logging.INFO, logger="dllmserve.worker.requests"):
        for _ in range(20):
            obs.iteration(0.005, "REUSE", ["a", "b"])
        obs.iteration(2.0, "FULL", ["a", "b", "c"])  # the first FULL: nothing to compare with
        obs.iteration(SLOW_FLOOR_S * 0.9, "REUSE", ["a", "b"])  # 45 x, but under the floor
        assert "slow_iteration" not in caplog.text
        obs.iteration(SLOW_FACTOR * 0.005 + 1.0, "REUSE", ["a", "b", "c"])
    (record,) = [r for r in caplog.records if "slow_iteration" in r.getMessage()]
    fields = getattr(record, EVENT_ATTR)
    assert fields["worker"] == "w1" and fields["phase"] == "REUSE" and fields["requests"] == 3
