"""OpenAI request bodies -> GenerateRequests of the gRPC API.

Only the JSON shape is checked here (types, OpenAI fields we cannot honour, `n`); the values
themselves (ranges, steps per block, roles, prompt sizes...) are checked by the scheduler, so
HTTP and gRPC clients meet exactly the same rules.

Field map: `max_tokens` (chat also `max_completion_tokens`) -> `gen_length` (and, unless
`steps` is given, steps = min(gen_length, 128): one token per step); `temperature`,
`top_p`, `seed` as is; `n` > 1 -> n requests with seeds seed, seed+1, ...; `stop` is applied to
the text by the gateway (`stop.py`); `user` is accepted and not used. dLLM fields at the top
level of the body (the SDKs' `extra_body`): every field of SamplingParams (`steps`,
`block_length`, `remasking`, `cfg_scale`, `threshold`, `top_k`, `schedule`, `alg_temp`, `eps`,
LLaDA2's `steps_per_block`, `minimal_topk`, `eos_early_stop`, `editing_threshold`, ...),
`sparse_config`
{SparseConfig fields}, `priority`,
`stream_mode` ("text" | "denoise"), `mask_placeholder` and `provisional` (with "denoise" only:
each step's proposed token and confidence at the masked positions of its block).

Structured outputs (docs/structured_outputs.md): OpenAI's `response_format` (`{"type":
"json_object"}`, `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`) and
vLLM's `structured_outputs` (`{"regex": ...}`, `{"choice": [...]}`, `{"json": schema}`,
`{"json_object": true}`) -> `SamplingParams.structured_output`; the scheduler's and the worker's
errors about it come back naming the body's field (`Plan.renames`).

A dense LLaDA-style request that leaves `block_length` unset gets blocks of 32 tokens (the
official generate.py's recommended setting) when they split it evenly (`gen_length` a multiple
of 32 and `steps` of the block count), so a text stream grows block by block instead of
appearing in the last steps of one block; a request asking for Dream's schedule or remasking,
or for sparse attention (whose `default_block_len` applies), is left as sent.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass, field

from google.protobuf.descriptor import FieldDescriptor

from dllmserve.gateway.errors import bad_field
from dllmserve.sampling_params import DREAM_REMASKING, SamplingParams
from dllmserve.v1 import dllm_pb2 as pb

MAX_N = 16  # choices of one HTTP request (prompts x n): each is a generation of its own
MAX_STOP = 4  # OpenAI's limit on stop strings
MAX_STOP_CHARS = 256
MAX_ID = 128  # the scheduler's limit on request ids
BLOCK = 32  # the default block length of a dense request over HTTP (see above)
STREAM_MODES = ("text", "denoise")
# the scalar fields, settable at the top level (structured_output comes from response_format or
# structured_outputs)
_SAMPLING = {f.name: f for f in pb.SamplingParams.DESCRIPTOR.fields if f.message_type is None}
_SPARSE = {f.name: f for f in pb.SparseConfig.DESCRIPTOR.fields}
_OWN = {"model", "stream", "stream_options", "n", "stop", "stream_mode", "mask_placeholder",
        "sparse_config", "priority", "max_tokens", "user", "provisional", "response_format",
        "structured_outputs"}  # fmt: skip
# OpenAI fields that change nothing here, accepted so that SDK defaults pass.
_IGNORED = {"metadata", "store", "service_tier", "parallel_tool_calls", "modalities"}
# OpenAI fields we cannot honour: refused unless they hold their neutral value.
_NEUTRAL = {
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "suffix": (None, ""),
    "best_of": (None, 1),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
}
WIRE_SO = "sampling_params.structured_output"
SO_KEYS = ("regex", "choice", "json", "json_object")  # structured_outputs' (vLLM's names)
_WIRE_TYPES = {
    FieldDescriptor.TYPE_DOUBLE: ((int, float), "a number"),
    FieldDescriptor.TYPE_INT32: ((int,), "an integer"),
    FieldDescriptor.TYPE_INT64: ((int,), "an integer"),
    FieldDescriptor.TYPE_BOOL: ((bool,), "a boolean"),
    FieldDescriptor.TYPE_STRING: ((str,), "a string"),
}


@dataclass
class Plan:
    """What one HTTP request asks for: one GenerateRequest per choice, in choice order."""

    chat: bool
    model: str
    requests: list[pb.GenerateRequest]
    stream: bool = False
    denoise: bool = False
    include_usage: bool = False
    stop: list[str] = field(default_factory=list)
    id: str = ""  # the response body's id: chatcmpl- / cmpl- and the request id
    n: int = 1  # choices per prompt (requests are prompt-major)
    request_id: str = ""  # X-Request-Id; the generations run as it, or <it>-<i> if several
    renames: dict[str, str] = field(default_factory=dict)  # wire field -> the body's name


def plan(body: object, chat: bool, request_id: str = "") -> Plan:
    """The generations `body` asks for, run as `request_id` (a fresh id when empty)."""
    if not isinstance(body, dict):
        raise bad_field("body", "must be a JSON object")
    _check_keys(body, chat)
    model = _opt(body, "model", str) or ""
    base = pb.GenerateRequest(model=model, cancel_on_disconnect=True)
    _sampling(body, chat, base.sampling_params)
    renames = _structured(body, base.sampling_params.structured_output)
    if body.get("sparse_config") is not None:
        _sparse(body["sparse_config"], base.sparse_config)
    base.priority = _opt(body, "priority", int) or 0
    mode = _opt(body, "stream_mode", str) or "text"
    if mode not in STREAM_MODES:
        raise bad_field("stream_mode", f"must be one of {list(STREAM_MODES)}, got {mode!r}")
    base.stream_options.mode = pb.STREAM_MODE_EVERY_STEP
    base.stream_options.mask_placeholder = _opt(body, "mask_placeholder", str) or ""
    stops = _stop(body)
    if mode == "denoise":
        base.stream_options.include_canvas = True
    # token texts: the canvas of the denoise mode, the tokens a stop string leaves in usage
    base.stream_options.include_token_texts = mode == "denoise" or bool(stops)
    base.stream_options.provisional = _opt(body, "provisional", bool) or False
    if base.stream_options.provisional and mode != "denoise":
        raise bad_field("provisional", 'needs "stream_mode": "denoise" (the canvas it fills in)')
    prompts = _messages(body) if chat else _prompts(body)
    n = _opt(body, "n", int)
    n = 1 if n is None else n
    if not 1 <= n <= MAX_N or n * len(prompts) > MAX_N:
        raise bad_field("n", f"prompts x n must be in [1, {MAX_N}], got {len(prompts)} x {n}")
    sp = base.sampling_params
    seed = sp.seed if sp.HasField("seed") else (random.getrandbits(31) if n > 1 else None)
    rid = request_id or uuid.uuid4().hex
    several = n * len(prompts) > 1
    if several and len(rid) > MAX_ID - 3:
        raise bad_field("X-Request-Id", f"must be at most {MAX_ID - 3} characters with several "
                        "choices (each runs as <id>-<i>)")  # fmt: skip
    requests = []
    for prompt in prompts:
        for j in range(n):
            req = pb.GenerateRequest()
            req.CopyFrom(base)
            prompt(req)
            req.request_id = f"{rid}-{len(requests)}" if several else rid
            if seed is not None:
                req.sampling_params.seed = seed + j
            requests.append(req)
    stream = _opt(body, "stream", bool) or False
    opts = _opt(body, "stream_options", dict) or {}
    include_usage = opts.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise bad_field("stream_options.include_usage", "must be a boolean")
    _opt(body, "user", str)  # accepted (OpenAI's end-user id), not used
    pid = ("chatcmpl-" if chat else "cmpl-") + rid
    return Plan(chat, model, requests, stream, mode == "denoise", include_usage,
                stops, pid, n, rid, renames)  # fmt: skip


def _check_keys(body: dict, chat: bool) -> None:
    own = _OWN | set(_SAMPLING) | ({"messages", "max_completion_tokens"} if chat else {"prompt"})
    for key, value in body.items():
        if key in own or key in _IGNORED:
            continue
        if key in _NEUTRAL:
            if value not in _NEUTRAL[key]:
                raise bad_field(key, "is not supported by this server (diffusion LMs)")
            continue
        raise bad_field(key, "unknown field")


def _opt(body: dict, key: str, kind: type, name: str = ""):
    """body[key] when present and not null, checked to be of `kind`."""
    v = body.get(key)
    if v is None:
        return None
    ok = isinstance(v, kind) and not (kind is int and isinstance(v, bool))
    if not ok:
        raise bad_field(name or key, f"must be {_KIND_NAMES[kind]}, got {v!r}")
    return v


_KIND_NAMES = {str: "a string", int: "an integer", bool: "a boolean", dict: "an object",
               list: "an array"}  # fmt: skip


def _set(msg, fields: dict, key: str, value: object, param: str) -> None:
    """Set a scalar proto field from JSON, with a 400 naming `param` on a wrong type."""
    f = fields[key]
    if f.is_repeated:
        if not isinstance(value, list):
            raise bad_field(param, f"must be an array, got {value!r}")
        for i, x in enumerate(value):
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                raise bad_field(f"{param}[{i}]", f"must be a number, got {x!r}")
        getattr(msg, key).extend(value)
        return
    kinds, what = _WIRE_TYPES[f.type]
    if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
        raise bad_field(param, f"must be {what}, got {value!r}")
    try:
        setattr(msg, key, value)
    except (TypeError, ValueError):
        raise bad_field(param, f"must be {what} in the 32/64-bit range, got {value!r}") from None


def _sampling(body: dict, chat: bool, sp: pb.SamplingParams) -> None:
    lengths = [k for k in ("max_tokens", "max_completion_tokens", "gen_length") if k in body]
    lengths = [k for k in lengths if body[k] is not None]
    if len(lengths) > 1:
        raise bad_field(lengths[1], f"give only one of {lengths}")
    if lengths:
        _set(sp, _SAMPLING, "gen_length", body[lengths[0]], lengths[0])
    for key in _SAMPLING:
        if key != "gen_length" and body.get(key) is not None:
            _set(sp, _SAMPLING, key, body[key], key)
    given_steps = sp.HasField("steps") or sp.HasField("steps_per_block")
    if sp.HasField("gen_length") and not given_steps and sp.gen_length >= 1:
        # OpenAI clients send only max_tokens: a short one must not fail on steps > gen_length.
        sp.steps = min(sp.gen_length, SamplingParams.steps)
    if not sp.HasField("block_length") and body.get("sparse_config") is None:
        _default_blocks(sp)


def _structured(body: dict, so: pb.StructuredOutput) -> dict[str, str]:
    """Fill `so` from response_format or structured_outputs (not both); returns the renames of
    the wire fields an error may name."""
    rf = body.get("response_format")
    kind = _opt(rf, "type", str, "response_format.type") if isinstance(rf, dict) else None
    if rf is not None and not isinstance(rf, dict):
        raise bad_field("response_format", f"must be an object, got {rf!r}")
    if rf is not None and kind != "text":
        if body.get("structured_outputs") is not None:
            raise bad_field("structured_outputs", "give it or response_format, not both")
        return _response_format(rf, kind, so)
    so_body = _opt(body, "structured_outputs", dict)
    return {} if so_body is None else _structured_outputs(so_body, so)


def _response_format(rf: dict, kind: str | None, so: pb.StructuredOutput) -> dict[str, str]:
    if kind == "json_object":
        so.json_object = True
        return {WIRE_SO: "response_format", f"{WIRE_SO}.json_object": "response_format"}
    if kind != "json_schema":
        kinds = '"text", "json_object" or "json_schema"'
        raise bad_field("response_format.type", f"must be {kinds}, got {kind!r}")
    js = rf.get("json_schema")
    if not isinstance(js, dict):
        raise bad_field("response_format.json_schema",
                        'must be an object {"name", "schema", "strict"}')  # fmt: skip
    _opt(js, "name", str, "response_format.json_schema.name")
    _opt(js, "strict", bool, "response_format.json_schema.strict")  # always strict here
    _opt(js, "description", str, "response_format.json_schema.description")
    schema = js.get("schema")
    if not isinstance(schema, dict):
        raise bad_field("response_format.json_schema.schema",
                        f"must be a JSON schema (an object), got {schema!r}")  # fmt: skip
    so.json_schema = json.dumps(schema)
    return {
        WIRE_SO: "response_format",
        f"{WIRE_SO}.json_schema": "response_format.json_schema.schema",
    }


def _structured_outputs(body: dict, so: pb.StructuredOutput) -> dict[str, str]:
    given = [k for k in body if body[k] is not None]
    unknown = [k for k in given if k not in SO_KEYS]
    if unknown:
        known = list(SO_KEYS)
        raise bad_field(f"structured_outputs.{unknown[0]}", f"unknown field; known: {known}")
    if len(given) != 1:
        raise bad_field("structured_outputs", f"give exactly one of {list(SO_KEYS)}, got {given}")
    key = given[0]
    name, value = f"structured_outputs.{key}", body[key]
    if key == "regex":
        so.regex = _opt(body, key, str, name)
    elif key == "choice":
        choices = _opt(body, key, list, name)
        for i, c in enumerate(choices):
            if not isinstance(c, str):
                raise bad_field(f"{name}[{i}]", f"must be a string, got {c!r}")
        so.choice.choices.extend(choices)
    elif key == "json":
        if not isinstance(value, (dict, str)):
            raise bad_field(name, f"must be a JSON schema (an object or its text), got {value!r}")
        so.json_schema = value if isinstance(value, str) else json.dumps(value)
    else:
        so.json_object = _opt(body, key, bool, name)
    wire = {"json": "json_schema"}.get(key, key)
    return {f"{WIRE_SO}.{wire}": name, WIRE_SO: "structured_outputs"}


def _default_blocks(sp: pb.SamplingParams) -> None:
    """Blocks of BLOCK tokens for a dense LLaDA-style request, when they split it evenly."""
    if sp.schedule == "dream" or sp.remasking in DREAM_REMASKING:
        return
    gen = sp.gen_length if sp.HasField("gen_length") else SamplingParams.gen_length
    steps = sp.steps if sp.HasField("steps") else SamplingParams.steps
    blocks = gen // BLOCK
    if gen > BLOCK and gen % BLOCK == 0 and steps > 0 and steps % blocks == 0:
        sp.block_length = BLOCK


def _sparse(value: object, sc: pb.SparseConfig) -> None:
    if not isinstance(value, dict):
        raise bad_field("sparse_config", f"must be an object, got {value!r}")
    sc.SetInParent()  # {} = the default SparseConfig (sparse attention on)
    for key, v in value.items():
        if key not in _SPARSE:
            raise bad_field(f"sparse_config.{key}", f"unknown field; known: {sorted(_SPARSE)}")
        if v is not None:
            _set(sc, _SPARSE, key, v, f"sparse_config.{key}")


def _messages(body: dict):
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise bad_field("messages", "must be a non-empty array of {role, content}")
    out: list[pb.ChatMessage] = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise bad_field(f"messages[{i}]", "must be an object with role and content")
        role = _opt(m, "role", str, f"messages[{i}].role") or ""
        role = "system" if role == "developer" else role  # OpenAI's newer name for it
        out.append(pb.ChatMessage(role=role, content=_content(m.get("content"), i)))

    def fill(req: pb.GenerateRequest) -> None:
        req.messages.messages.extend(out)

    return [fill]


def _content(content: object, i: int) -> str:
    """A message's text: a string, or an array of text parts (joined)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_field(f"messages[{i}].content", "must be a string or an array of text parts")
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text":
            raise bad_field(f"messages[{i}].content[{j}]", 'only {"type": "text"} parts are read')
        texts.append(_opt(part, "text", str, f"messages[{i}].content[{j}].text") or "")
    return "".join(texts)


def _prompts(body: dict):
    """`prompt`: a string, an array of strings, an array of token ids, or of such arrays."""
    p = body.get("prompt")
    if isinstance(p, str):
        items: list = [p]
    elif isinstance(p, list) and p and all(_is_int(x) for x in p):
        items = [p]
    elif isinstance(p, list) and p and all(isinstance(x, (str, list)) for x in p):
        items = p
    else:
        raise bad_field("prompt", "must be a string, an array of strings or of token ids")
    fills = []
    for i, item in enumerate(items):
        if isinstance(item, list) and not all(_is_int(x) for x in item):
            raise bad_field(f"prompt[{i}]", "must be an array of integer token ids")
        fills.append(_fill_prompt(item))
    return fills


def _fill_prompt(item: str | list[int]):
    def fill(req: pb.GenerateRequest) -> None:
        if isinstance(item, str):
            req.text = item
        else:
            try:
                req.token_ids.ids.extend(item)
            except ValueError:
                raise bad_field("prompt", "token ids must fit in 32 bits") from None

    return fill


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _stop(body: dict) -> list[str]:
    s = body.get("stop")
    if s is None:
        return []
    stops = [s] if isinstance(s, str) else s
    if not isinstance(stops, list) or not all(isinstance(x, str) and x for x in stops):
        raise bad_field("stop", "must be a non-empty string or an array of them")
    if len(stops) > MAX_STOP or any(len(x) > MAX_STOP_CHARS for x in stops):
        raise bad_field(
            "stop", f"at most {MAX_STOP} strings of at most {MAX_STOP_CHARS} characters"
        )
    return stops
