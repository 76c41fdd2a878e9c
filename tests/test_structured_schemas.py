"""Schemas and regexes compiled against the tiny models' byte tokenizer: a diffusion-style
decode whose every step takes RANDOM scores, commits a random subset of the DP's assignment and
moves on block by block always ends in an answer that parses and validates (jsonschema) or
fully matches the regex; the refusals name the field and the reason."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import torch

from dllmserve.errors import ValidationError
from dllmserve.models.shapes import SHAPES, shape_tokenizer
from dllmserve.structured.compiler import compile_constraint
from dllmserve.structured.dp import best_assignment
from dllmserve.structured.spec import JSON_OBJECT_SCHEMA, StructuredOutput
from dllmserve.structured.vocab import token_bytes

torch.set_num_threads(1)
CFG = SHAPES["tiny"]


@pytest.fixture(scope="module")
def vocab():
    tok = shape_tokenizer(CFG)
    stops = (CFG.eos_token_id, tok.convert_tokens_to_ids("<|eot_id|>"))
    return tok, token_bytes(tok, CFG.vocab_size, stops, "f")


SCHEMAS = [
    {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 6}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    },
    {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]},
    {
        "type": "array",
        "items": {"type": "integer", "minimum": -3, "maximum": 12},
        "minItems": 1,
        "maxItems": 4,
    },
    {
        "type": "array",
        "items": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2},
        "maxItems": 3,
    },
    {"enum": ["red", "green", "blue"]},
    {"type": "string", "enum": ['a"b', "c\\d"]},
    {"type": "integer", "minimum": 100, "maximum": 250},
    {"type": "integer", "exclusiveMinimum": -10, "exclusiveMaximum": -2},
    {"type": "integer", "minimum": 7},
    {"type": "number"},
    {"type": "string", "minLength": 2, "maxLength": 5},
    {"type": "string", "pattern": "^[a-z]{2}-[0-9]{3}$"},
    {"type": "string", "pattern": "x|yz"},
    {"anyOf": [{"type": "integer", "maximum": 5}, {"type": "null"}]},
    {
        "type": "object",
        "properties": {
            "a": {"type": "integer"},
            "b": {"type": "string", "maxLength": 3},
            "c": {"type": "boolean"},
        },
        "required": ["b"],
    },
    {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": {"enum": ["x", "y"]}, "maxItems": 3}},
    },
    {
        "type": "object",
        "properties": {"p": {"$ref": "#/$defs/pt"}},
        "required": ["p"],
        "$defs": {
            "pt": {
                "type": "object",
                "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 9}},
                "required": ["x"],
            }
        },
    },
    {"type": ["string", "null"], "maxLength": 4},
    {"const": {"k": [1, 2]}},
    {
        "type": "object",
        "properties": {
            "name": {"const": "get_weather"},
            "arguments": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 8},
                    "unit": {"enum": ["c", "f"]},
                },
                "required": ["city", "unit"],
            },
        },
        "required": ["name", "arguments"],
    },
    {
        "type": "array",
        "prefixItems": [{"type": "integer", "minimum": 1, "maximum": 3}, {"type": "boolean"}],
    },
    JSON_OBJECT_SCHEMA,
]
REGEXES = [r"(ab)+", r"[0-9]{3}-[0-9]{4}", r"(yes|no|maybe)!?", r"\d+(\.\d{1,2})?",
           r"^[A-Z][a-z]{1,4} [A-Z][a-z]{1,4}$", r"(a|bc)*d"]  # fmt: skip


def decode_constrained(a, n_vocab: int, length: int, block: int, seed: int) -> list[int]:
    """LLaDA's block schedule on random scores: each step commits 1-3 random masked positions
    of the DP's assignment."""
    gen = torch.Generator().manual_seed(seed)
    canvas = [-1] * length
    for start in range(0, length, block):
        end = min(start + block, length)
        state = a.walk(a.start, canvas[:start])
        while -1 in canvas[start:end]:
            scores = torch.randn((end - start, n_vocab), generator=gen) * 4
            tokens, feasible = best_assignment(
                a, scores, torch.tensor(canvas[start:end]), state, length - end
            )
            assert bool(feasible)
            masked = [i for i in range(start, end) if canvas[i] < 0]
            pick = torch.randperm(len(masked), generator=gen)[: int(torch.randint(1, 4, (1,)))]
            for j in pick.tolist():
                canvas[masked[j]] = int(tokens[masked[j] - start])
    return canvas


def answer(tok, stops, canvas: list[int]) -> str:
    end = next((i for i, t in enumerate(canvas) if t in stops), len(canvas))
    assert all(t in stops for t in canvas[end:])
    return tok.decode(canvas[:end], skip_special_tokens=True)


@pytest.mark.parametrize("i", range(len(SCHEMAS)))
def test_random_constrained_decodes_validate(vocab, i):
    tok, tb = vocab
    schema = SCHEMAS[i]
    a = compile_constraint(StructuredOutput(json_schema=schema), tb)
    for seed in range(3):
        length = a.min_length + 24
        canvas = decode_constrained(a, CFG.vocab_size, length, block=8, seed=seed)
        text = answer(tok, tb.stop_ids, canvas)
        jsonschema.validate(json.loads(text), schema)
        assert schema is not JSON_OBJECT_SCHEMA or isinstance(json.loads(text), dict)


@pytest.mark.parametrize("regex", REGEXES)
def test_random_constrained_decodes_match_the_regex(vocab, regex):
    tok, tb = vocab
    a = compile_constraint(StructuredOutput(regex=regex), tb)
    for seed in range(3):
        canvas = decode_constrained(a, CFG.vocab_size, a.min_length + 12, block=5, seed=seed)
        assert re.fullmatch(regex, answer(tok, tb.stop_ids, canvas)), canvas


def test_choice_answers_are_one_of_the_choices(vocab):
    tok, tb = vocab
    choices = ["Paris", "Lyon", "a.b*c", "Saint-Étienne"]
    a = compile_constraint(StructuredOutput(choice=choices), tb)
    for seed in range(4):
        canvas = decode_constrained(a, CFG.vocab_size, 20, block=4, seed=seed)
        assert answer(tok, tb.stop_ids, canvas) in choices


def test_a_canvas_exactly_the_shortest_answer_long_fits(vocab):
    tok, tb = vocab
    a = compile_constraint(StructuredOutput(json_schema=SCHEMAS[0]), tb)
    canvas = decode_constrained(a, CFG.vocab_size, a.min_length, block=4, seed=0)
    jsonschema.validate(json.loads(answer(tok, tb.stop_ids, canvas)), SCHEMAS[0])


REFUSED = [
    ({"json_schema": "{not json"}, "json_schema", "not valid JSON"),
    ({"json_schema": {"type": "integer", "minimum": "x"}}, "json_schema", "not a valid JSON"),
    ({"json_schema": {"type": "array", "uniqueItems": True}}, "json_schema", "uniqueItems"),
    ({"json_schema": {"oneOf": [{"type": "integer"}]}}, "json_schema", "use anyOf"),
    ({"json_schema": {"type": "string", "foo": 1}}, "json_schema", "'foo'"),
    ({"json_schema": {"type": "number", "maximum": 3}}, "json_schema", "type integer only"),
    (
        {"json_schema": {"type": "string", "pattern": "a+", "maxLength": 3}},
        "json_schema",
        "min/maxLength",
    ),
    ({"json_schema": {"type": "integer", "minimum": 5, "maximum": 4}}, "json_schema", "no integer"),
    ({"regex": ""}, "regex", "non-empty"),
    ({"choice": []}, "choice", "1 to"),
    ({"choice": ["a", 3]}, "choice[1]", "must be a string"),
    ({"regex": "a", "choice": ["a"]}, "structured_output", "exactly one"),
]


@pytest.mark.parametrize("kwargs,field,reason", REFUSED)
def test_bad_constraints_are_refused_by_name(kwargs, field, reason):
    with pytest.raises(ValidationError) as e:
        StructuredOutput(**kwargs)
    assert e.value.field.endswith(field) and reason in e.value.reason


@pytest.mark.parametrize(
    "spec,reason",
    [
        (StructuredOutput(regex="(a"), "cannot be compiled"),
        (StructuredOutput(regex="a(?=b)"), "cannot be compiled"),
        (StructuredOutput(json_schema={"type": "string", "format": "hostname"}), "hostname"),
        (StructuredOutput(json_schema={"type": "string", "pattern": '[a-z"]+'}), "escape"),
    ],
)
def test_compile_errors_name_the_field(vocab, spec, reason):
    _, tb = vocab
    with pytest.raises(ValidationError) as e:
        compile_constraint(spec, tb)
    assert e.value.field == spec.field and reason in e.value.reason


def test_a_compile_past_its_time_limit_is_refused(vocab):
    _, tb = vocab
    with pytest.raises(ValidationError) as e:
        compile_constraint(StructuredOutput(regex="(a|b)*a(a|b){22}"), tb, timeout_s=0.5)
    assert e.value.field.endswith(".regex") and "time limit" in e.value.reason
