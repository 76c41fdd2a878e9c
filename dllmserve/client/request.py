"""Requests from Python values, and the per-stream state the clients keep: `Canvas` (what a
viewer shows) and `Resume` (where to re-attach after a lost connection)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

from dllmserve.v1 import dllm_pb2 as pb

STREAM_MODES = {
    "every_step": pb.STREAM_MODE_EVERY_STEP,
    "every_k_steps": pb.STREAM_MODE_EVERY_K_STEPS,
    "blocks": pb.STREAM_MODE_BLOCKS,
    "final_only": pb.STREAM_MODE_FINAL_ONLY,
}


def _params_msg(msg_type, value):
    if value is None:
        return None
    if isinstance(value, msg_type):
        return value
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    msg = msg_type()
    for k, v in dict(value).items():
        if v is None:
            continue
        if k == "layer_ratios":
            msg.layer_ratios.extend(v)
        elif k == "structured_output":
            msg.structured_output.CopyFrom(_structured_msg(v))
        else:
            setattr(msg, k, v)
    return msg


def _structured_msg(value) -> pb.StructuredOutput:
    """A `StructuredOutput` (or a dict of its fields: json_schema as a dict or its text, regex,
    choice, json_object) as its message."""
    if isinstance(value, pb.StructuredOutput):
        return value
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    given = {k: v for k, v in dict(value).items() if v is not None}
    schema = given.pop("json_schema", None)
    msg = pb.StructuredOutput(**{k: v for k, v in given.items() if k != "choice"})
    if schema is not None:
        msg.json_schema = schema if isinstance(schema, str) else json.dumps(schema)
    if "choice" in given:
        msg.choice.choices.extend(given["choice"])
    return msg


def _stream_mode(mode: str | int) -> int:
    if isinstance(mode, int):
        return mode
    if mode not in STREAM_MODES:
        raise ValueError(f"stream_mode: must be one of {', '.join(STREAM_MODES)}, got {mode!r}")
    return STREAM_MODES[mode]


def build_request(
    prompt: str | None = None,
    *,
    messages: Sequence[dict] | None = None,
    token_ids: Sequence[int] | None = None,
    model: str = "",
    sampling_params=None,
    sparse_config=None,
    stream_mode: str | int = "every_step",
    every_k: int = 0,
    include_canvas: bool = False,
    mask_placeholder: str = "",
    include_token_texts: bool = False,
    provisional: bool = False,
    request_id: str = "",
    priority: int = 0,
    cancel_on_disconnect: bool = False,
) -> pb.GenerateRequest:
    """A GenerateRequest from Python values (dicts, or SamplingParams / SparseConfig)."""
    req = pb.GenerateRequest(
        request_id=request_id,
        model=model,
        priority=priority,
        cancel_on_disconnect=cancel_on_disconnect,
        stream_options=pb.StreamOptions(
            mode=_stream_mode(stream_mode),
            every_k=every_k,
            include_canvas=include_canvas,
            mask_placeholder=mask_placeholder,
            include_token_texts=include_token_texts,
            provisional=provisional,
        ),
    )
    if messages is not None:
        req.messages.messages.extend(
            pb.ChatMessage(role=m["role"], content=m["content"]) for m in messages
        )
    elif token_ids is not None:
        req.token_ids.ids.extend(token_ids)
    elif prompt is not None:
        req.text = prompt
    sp = _params_msg(pb.SamplingParams, sampling_params)
    if sp is not None:
        req.sampling_params.CopyFrom(sp)
    sc = _params_msg(pb.SparseConfig, sparse_config)
    if sc is not None:
        req.sparse_config.CopyFrom(sc)
    return req


class Canvas:
    """Applies StepUpdates in order; restarts when the attempt changes."""

    def __init__(self) -> None:
        self.attempt: int | None = None
        self.tokens: dict[int, int] = {}
        self.text = ""
        self.canvas = ""
        self.step = 0

    def apply(self, upd) -> None:
        """Apply a StepUpdate (the client's dataclass or the protobuf: same fields)."""
        if upd.attempt != self.attempt:
            self.attempt, self.tokens, self.text = upd.attempt, {}, ""
        for p, t in zip(upd.positions, upd.token_ids, strict=True):
            self.tokens[p] = t
        self.text += upd.text_delta
        if upd.canvas:
            self.canvas = upd.canvas
        self.step = upd.step

    def token_ids(self, length: int, fill: int = -1) -> list[int]:
        return [self.tokens.get(i, fill) for i in range(length)]


class Resume:
    """What a client needs to re-attach: the request id and the last step it saw."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.accepted = False
        self.step = 0
        self.attempt = 0

    def see(self, ev: pb.GenerateEvent) -> bool:
        """Record an event; False when it is the Accepted of a re-attach (not shown again)."""
        kind = ev.WhichOneof("event")
        if kind == "accepted":
            if self.accepted:
                return False
            self.accepted = True
        elif kind == "step":
            self.step, self.attempt = ev.step.step, ev.step.attempt
        return True

    def attach_request(self, opts: pb.StreamOptions) -> pb.AttachRequest:
        return pb.AttachRequest(
            request_id=self.request_id,
            after_step=self.step,
            attempt=self.attempt,
            stream_options=opts,
        )
