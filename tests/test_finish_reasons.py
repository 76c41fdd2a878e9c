"""The finish reason's one table (dllmserve/finish_reasons.py) covers what the engine produces,
and every reader of the wire value goes through it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from dllmserve import finish_reasons
from dllmserve.client import FinishReason
from dllmserve.v1 import dllm_pb2 as pb
from dllmserve.worker.metrics import FINISH_REASONS

ENGINE = Path(__file__).resolve().parents[1] / "dllmserve" / "engine"


def produced_by_the_engine() -> set[str]:
    """Every string the engine's code assigns to a `finish_reason`."""
    found = set()
    for p in ENGINE.glob("*.py"):
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Assign) and any(
                getattr(t, "attr", None) == "finish_reason" for t in node.targets
            ):
                for c in ast.walk(node.value):
                    if isinstance(c, ast.Constant) and isinstance(c.value, str):
                        found.add(c.value)
    return found


def test_the_table_holds_exactly_what_the_engine_produces():
    assert produced_by_the_engine() == set(finish_reasons.TO_PB) == {"stop", "length"}


@pytest.mark.parametrize("reason", sorted(finish_reasons.TO_PB))
def test_a_reason_survives_the_wire(reason):
    value = finish_reasons.to_pb(reason)
    assert value != pb.FINISH_REASON_UNSPECIFIED and finish_reasons.from_pb(value) == reason
    assert FinishReason.from_pb(value) == reason and reason in FINISH_REASONS


def test_a_value_outside_the_table_reads_as_unspecified():
    assert finish_reasons.to_pb(None) == pb.FINISH_REASON_UNSPECIFIED
    for value in pb.FinishReason.values():
        if value not in finish_reasons.TO_PB.values():
            assert FinishReason.from_pb(value) is FinishReason.UNSPECIFIED
