"""The client's dataclasses mirror the wire messages field for field, so a field added to the
proto cannot silently go missing from what Python callers see."""

from __future__ import annotations

import dataclasses

import pytest

from dllmserve.client import types as t
from dllmserve.v1 import dllm_pb2 as pb

PAIRS = [(t.Accepted, pb.Accepted), (t.StepUpdate, pb.StepUpdate), (t.Completed, pb.Completed),
         (t.Usage, pb.Usage), (t.Timings, pb.Timings), (t.ModelInfo, pb.ModelInfo),
         (t.WorkerInfo, pb.WorkerInfo), (t.ServerInfo, pb.ServerInfo)]  # fmt: skip


@pytest.mark.parametrize(("cls", "msg"), PAIRS, ids=[c.__name__ for c, _ in PAIRS])
def test_dataclass_has_every_proto_field(cls, msg):
    assert [f.name for f in dataclasses.fields(cls)] == [f.name for f in msg.DESCRIPTOR.fields]


def test_events_convert_with_enum_names_and_tuples():
    ev = pb.GenerateEvent(completed=pb.Completed(
        request_id="r", text="hi", token_ids=[1, 2], finish_reason=pb.FINISH_REASON_LENGTH,
        usage=pb.Usage(steps=4), timings=pb.Timings(total_ms=5.0)))  # fmt: skip
    done = t.event_from_pb(ev)
    assert done.finish_reason is t.FinishReason.LENGTH and done.finish_reason == "length"
    assert str(done.finish_reason) == "length" and done.token_ids == (1, 2)
    assert done.usage.steps == 4 and done.to_dict()["finish_reason"] == "length"
    step = t.event_from_pb(pb.GenerateEvent(step=pb.StepUpdate(step=1, positions=[3])))
    assert isinstance(step, t.StepUpdate) and step.positions == (3,)
    with pytest.raises(ValueError, match="no event"):
        t.event_from_pb(pb.GenerateEvent())
