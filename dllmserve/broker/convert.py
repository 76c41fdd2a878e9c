"""The protobuf -> domain conversions of the scheduler's validation: a GenerateRequest's prompt,
SamplingParams, SparseConfig and StructuredOutput as the engine's own types. Building those
types runs their checks, so a bad field gets the offline API's ValidationError, by name. They
run once per request: the worker gets their result as the stored `Admission`."""

from __future__ import annotations

from dllmserve.errors import ValidationError
from dllmserve.sampling_params import SamplingParams
from dllmserve.sparse.state import SparseConfig
from dllmserve.structured.spec import FIELD, MAX_CHOICES, StructuredOutput
from dllmserve.v1 import dllm_pb2 as pb

_SP_FIELDS = [f.name for f in pb.SamplingParams.DESCRIPTOR.fields]
_SC_SCALARS = [f.name for f in pb.SparseConfig.DESCRIPTOR.fields if f.name != "layer_ratios"]


def to_sampling_params(msg: pb.SamplingParams) -> SamplingParams:
    kwargs = {name: getattr(msg, name) for name in _SP_FIELDS if msg.HasField(name)}
    if "structured_output" in kwargs:
        kwargs["structured_output"] = to_structured_output(msg.structured_output)
    return SamplingParams(**kwargs)


def to_structured_output(msg: pb.StructuredOutput) -> StructuredOutput:
    """The wire's StructuredOutput; its model-free checks (valid JSON, a valid schema of the
    supported keywords) run here, compiling on the worker (docs/structured_outputs.md)."""
    kind = msg.WhichOneof("kind")
    if kind is None:
        raise ValidationError(
            FIELD, "set one of json_schema, regex, choice, json_object (or leave it unset)"
        )
    if kind == "json_object":
        if not msg.json_object:
            raise ValidationError(f"{FIELD}.json_object", "must be true when given")
        return StructuredOutput.json_object()
    if kind == "choice":
        if len(msg.choice.choices) > MAX_CHOICES:  # before the list is copied out
            raise ValidationError(
                f"{FIELD}.choice",
                f"must hold 1 to {MAX_CHOICES} strings, got {len(msg.choice.choices)}",
            )
        return StructuredOutput(choice=tuple(msg.choice.choices))
    return StructuredOutput(**{kind: getattr(msg, kind)})


def to_sparse_config(msg: pb.SparseConfig) -> SparseConfig:
    kwargs = {name: getattr(msg, name) for name in _SC_SCALARS if msg.HasField(name)}
    if len(msg.layer_ratios):
        kwargs["layer_ratios"] = msg.layer_ratios  # its length is checked before it is copied
    return SparseConfig(**kwargs)


def prompt_of(req: pb.GenerateRequest) -> str | list[int] | list[dict]:
    kind = req.WhichOneof("prompt")
    if kind == "text":
        return req.text
    if kind == "token_ids":
        return list(req.token_ids.ids)
    if kind == "messages":
        return [{"role": m.role, "content": m.content} for m in req.messages.messages]
    raise ValidationError("prompt", "one of text, token_ids or messages is required")
