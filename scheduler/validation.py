"""Request validation: the same checks (and messages) as the offline API, plus the wire-only ones.

Sampling and sparse fields are validated by constructing `SamplingParams` / `SparseConfig`
themselves, so a bad field gets the identical `ValidationError` (naming the field) whether it
arrives through `LLM.generate` or gRPC. The checks that need the model and engine run
`resolve_request` against the limits the model's workers registered (`check_fits`), the same
function each engine runs when it admits the request: one source of every rule.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from dllmserve.broker.admission import Admission
from dllmserve.broker.convert import prompt_of, to_sampling_params, to_sparse_config
from dllmserve.engine.inputs import ModelLimits, resolve_request
from dllmserve.errors import CapacityError, ValidationError, echo
from dllmserve.scheduler.config import Limits
from dllmserve.v1 import dllm_pb2 as pb

REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # whole string: used with fullmatch
MAX_MODEL_NAME = 256
CHAT_ROLES = ("system", "user", "assistant")
DEFAULT_LIMITS = Limits()  # the wire-level limits, whatever the model


def check_request_id(request_id: str, required: bool) -> None:
    """Ids are short and plain (they name Redis keys); empty means "pick one" where allowed."""
    if not request_id and not required:
        return
    if not REQUEST_ID_RE.fullmatch(request_id):
        raise ValidationError(
            "request_id",
            f"must be 1-128 characters of [A-Za-z0-9._:-]"
            f"{'' if required else ' (or empty for a new id)'}, got {echo(request_id)}",
        )


def validate_request(req: pb.GenerateRequest, limits: Limits = DEFAULT_LIMITS) -> Admission:
    """Validate a request; raises ValidationError naming the first bad field."""
    check_request_id(req.request_id, required=False)
    if len(req.model) > MAX_MODEL_NAME:
        raise ValidationError(
            "model", f"must be at most {MAX_MODEL_NAME} characters, got {len(req.model)}"
        )
    _check_prompt(req, limits)
    prompt = prompt_of(req)
    sp = to_sampling_params(req.sampling_params)
    if sp.gen_length > limits.max_gen_length:
        raise ValidationError(
            "sampling_params.gen_length",
            f"must be in [1, {limits.max_gen_length}] on this server, got {sp.gen_length}",
        )
    sc = to_sparse_config(req.sparse_config) if req.HasField("sparse_config") else None
    if not -100 <= req.priority <= 100:
        raise ValidationError("priority", f"must be in [-100, 100], got {req.priority}")
    check_stream_options(req.stream_options, limits)
    return Admission(prompt=prompt, sampling_params=sp, sparse_config=sc)


def check_fits(admission: Admission, workers: Sequence[ModelLimits]) -> None:
    """Refuse a request that none of `workers` (the limits a model's workers registered) could
    ever run, with the error `resolve_request` gives for the first of them.

    A token-id prompt is checked exactly (its length, its ids against the vocabulary); text and
    chat messages are not tokenized here and count as one token, so what is refused would be
    refused whatever the prompt. Without workers (none registered yet) nothing is checked."""
    prompt, sp, sc = admission.prompt, admission.sampling_params, admission.sparse_config
    ids = prompt if prompt and isinstance(prompt[0], int) else None
    first: ValidationError | CapacityError | None = None
    for limits in workers:
        try:
            resolve_request(limits, sp, sc, prompt_ids=ids)
            return
        except (ValidationError, CapacityError) as e:
            first = first or e
    if first is not None:
        raise first


def check_stream_options(
    opts: pb.StreamOptions, limits: Limits, field: str = "stream_options"
) -> None:
    if opts.mode not in pb.StreamMode.values():
        raise ValidationError(
            f"{field}.mode", f"must be one of {sorted(pb.StreamMode.values())}, got {opts.mode}"
        )
    if opts.mode == pb.STREAM_MODE_EVERY_K_STEPS and opts.every_k < 1:
        raise ValidationError(f"{field}.every_k", "must be >= 1 with STREAM_MODE_EVERY_K_STEPS")
    # a request has at most gen_length steps: a larger every_k means nothing more
    if not 0 <= opts.every_k <= limits.max_gen_length:
        raise ValidationError(
            f"{field}.every_k", f"must be in [0, {limits.max_gen_length}], got {opts.every_k}"
        )
    if len(opts.mask_placeholder) > 16:
        raise ValidationError(
            f"{field}.mask_placeholder",
            f"must be at most 16 characters, got {len(opts.mask_placeholder)}",
        )


def _check_prompt(req: pb.GenerateRequest, limits: Limits) -> None:
    """Sizes first, on the message itself: nothing is copied out of an oversized list."""
    kind = req.WhichOneof("prompt")
    if kind == "text":
        if not req.text:
            raise ValidationError("text", "must not be empty")
        if len(req.text) > limits.max_prompt_chars:
            raise ValidationError(
                "text",
                f"must be at most {limits.max_prompt_chars} characters, got {len(req.text)}",
            )
    elif kind == "token_ids":
        ids = req.token_ids.ids
        if not ids:
            raise ValidationError("token_ids.ids", "must not be empty")
        if len(ids) > limits.max_prompt_tokens:
            raise ValidationError(
                "token_ids.ids",
                f"must hold at most {limits.max_prompt_tokens} tokens, got {len(ids)}",
            )
        for i, t in enumerate(ids):
            if t < 0:
                raise ValidationError(f"token_ids.ids[{i}]", f"must be >= 0, got {t}")
    elif kind == "messages":
        msgs = req.messages.messages
        if not msgs:
            raise ValidationError("messages.messages", "must hold at least one message")
        if len(msgs) > limits.max_messages:
            raise ValidationError(
                "messages.messages",
                f"must hold at most {limits.max_messages} messages, got {len(msgs)}",
            )
        total = 0
        for i, m in enumerate(msgs):
            if m.role not in CHAT_ROLES:
                raise ValidationError(
                    f"messages.messages[{i}].role",
                    f"must be one of {list(CHAT_ROLES)}, got {echo(m.role)}",
                )
            total += len(m.content)
        if total > limits.max_prompt_chars:
            raise ValidationError(
                "messages.messages",
                f"must hold at most {limits.max_prompt_chars} characters, got {total}",
            )
