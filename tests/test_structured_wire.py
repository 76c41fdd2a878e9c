"""The gRPC StructuredOutput field -> `StructuredOutput`: each kind, and the model-free refusals
by name (what the scheduler answers with INVALID_ARGUMENT before anything is queued)."""

from __future__ import annotations

import json

import pytest

from dllmserve.broker.convert import to_sampling_params
from dllmserve.errors import ValidationError
from dllmserve.structured import StructuredOutput
from dllmserve.structured.spec import JSON_OBJECT_SCHEMA
from dllmserve.v1 import dllm_pb2 as pb


def wire(**kind) -> pb.SamplingParams:
    return pb.SamplingParams(gen_length=32, steps=32, structured_output=pb.StructuredOutput(**kind))


def test_each_kind_becomes_the_offline_value():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    got = to_sampling_params(wire(json_schema=json.dumps(schema))).structured_output
    assert got == StructuredOutput(json_schema=schema)
    assert to_sampling_params(wire(regex="[a-z]+")).structured_output.regex == "[a-z]+"
    choice = to_sampling_params(wire(choice=pb.ChoiceList(choices=["yes", "no"])))
    assert choice.structured_output.choice == ("yes", "no")
    obj = to_sampling_params(wire(json_object=True)).structured_output
    assert json.loads(obj.json_schema) == JSON_OBJECT_SCHEMA
    assert to_sampling_params(pb.SamplingParams()).structured_output is None


@pytest.mark.parametrize(
    "kind, field, reason",
    [
        ({}, "sampling_params.structured_output", "set one of"),
        ({"json_object": False}, "sampling_params.structured_output.json_object", "true"),
        ({"json_schema": "{"}, "sampling_params.structured_output.json_schema", "not valid JSON"),
        ({"json_schema": '{"type": "string", "not": {}}'},
         "sampling_params.structured_output.json_schema", "not"),
        ({"json_schema": '{"type": "nope"}'},
         "sampling_params.structured_output.json_schema", "nope"),
        ({"regex": ""}, "sampling_params.structured_output.regex", "non-empty"),
        ({"choice": pb.ChoiceList()}, "sampling_params.structured_output.choice", "1 to 1024"),
        ({"choice": pb.ChoiceList(choices=["a"] * 1025)},
         "sampling_params.structured_output.choice", "1 to 1024"),
        ({"choice": pb.ChoiceList(choices=["a", ""])},
         "sampling_params.structured_output.choice[1]", "non-empty"),
    ],
)  # fmt: skip
def test_model_free_refusals_name_the_field(kind, field, reason):
    with pytest.raises(ValidationError) as e:
        to_sampling_params(wire(**kind))
    assert e.value.field == field
    assert reason in e.value.reason
