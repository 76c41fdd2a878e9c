"""What a request's answer must match: a JSON schema, a regular expression or a list of choices.

`StructuredOutput` is a small typed, hashable value (it sits in the frozen `SamplingParams`);
its checks here are the ones that need no model: the JSON is valid, the schema is valid for its
draft and uses only the keywords whose every instance the compiled automaton keeps valid
(`dllmserve.structured.schema`). Compiling against the model's vocabulary happens on the engine
(`dllmserve.structured.compiler`), where a regex the library cannot compile is refused.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from dllmserve.errors import ValidationError, echo

FIELD = "sampling_params.structured_output"
MAX_SPEC_CHARS = 65536  # a schema, a regex or all choices together, as text
MAX_CHOICES = 1024
# OpenAI's {"type": "json_object"}: a JSON object whose values are scalars, or arrays or objects
# of scalars. Two levels: the automaton of outlines-core's generic object (deeper nesting) takes
# seconds to build, this one a fraction of a second.
_SCALAR = {"type": ["string", "number", "boolean", "null"]}
JSON_OBJECT_SCHEMA = {
    "type": "object",
    "additionalProperties": {
        "anyOf": [
            _SCALAR,
            {"type": "array", "items": _SCALAR},
            {"type": "object", "additionalProperties": _SCALAR},
        ]
    },
}


@dataclass(frozen=True)
class StructuredOutput:
    """Exactly one of: ``json_schema`` (a dict or its JSON text; kept as canonical JSON text),
    ``regex`` (the whole answer matches it: Rust `regex` syntax, the outlines-core dialect) or
    ``choice`` (the answer is one of these strings). ``json_object()`` is any JSON object."""

    json_schema: str | None = None
    regex: str | None = None
    choice: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.json_schema is not None:
            object.__setattr__(self, "json_schema", _canonical_schema(self.json_schema))
        if self.choice is not None:
            object.__setattr__(self, "choice", _choices(self.choice))
        self.validate()

    @classmethod
    def json_object(cls) -> StructuredOutput:
        return cls(json_schema=JSON_OBJECT_SCHEMA)

    @property
    def kind(self) -> str:
        """The field that is set: "json_schema", "regex" or "choice"."""
        return next(k for k in ("json_schema", "regex", "choice") if getattr(self, k) is not None)

    @property
    def field(self) -> str:
        """The request field a compile error names, e.g. sampling_params.structured_output.regex."""
        return f"{FIELD}.{self.kind}"

    @property
    def key(self) -> tuple[str, str]:
        """What the compiled automaton is cached by (with the tokenizer's fingerprint)."""
        value = self.json_schema or self.regex or json.dumps(list(self.choice or ()))
        return self.kind, value

    def validate(self) -> None:
        """The checks that need no model; the message names the field and the reason."""
        given = [k for k in ("json_schema", "regex", "choice") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValidationError(
                FIELD, f"set exactly one of json_schema, regex, choice; got {given or 'none'}"
            )
        if self.regex is not None:
            _check_text(f"{FIELD}.regex", self.regex)
        if self.json_schema is not None:
            from dllmserve.structured.schema import check_schema

            check_schema(json.loads(self.json_schema), f"{FIELD}.json_schema")


def _canonical_schema(schema: object) -> str:
    field = f"{FIELD}.json_schema"
    if isinstance(schema, str):
        if len(schema) > MAX_SPEC_CHARS:
            raise ValidationError(field, f"is {len(schema)} characters; at most {MAX_SPEC_CHARS}")
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise ValidationError(field, f"is not valid JSON: {e}") from None
    if not isinstance(schema, dict):
        raise ValidationError(field, f"must be a JSON object (a schema), got {echo(schema)}")
    try:
        text = json.dumps(schema, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValidationError(field, f"is not JSON-serialisable: {e}") from None
    if len(text) > MAX_SPEC_CHARS:
        raise ValidationError(field, f"is {len(text)} characters; at most {MAX_SPEC_CHARS}")
    return text


def _choices(options: object) -> tuple[str, ...]:
    field = f"{FIELD}.choice"
    if isinstance(options, str) or not isinstance(options, Sequence):
        raise ValidationError(field, f"must be a list of strings, got {echo(options)}")
    if not 1 <= len(options) <= MAX_CHOICES:
        raise ValidationError(field, f"must hold 1 to {MAX_CHOICES} strings, got {len(options)}")
    for i, c in enumerate(options):
        if not isinstance(c, str):
            raise ValidationError(f"{field}[{i}]", f"must be a string, got {echo(c)}")
        _check_text(f"{field}[{i}]", c)
    total = sum(len(c) for c in options)
    if total > MAX_SPEC_CHARS:
        raise ValidationError(field, f"holds {total} characters; at most {MAX_SPEC_CHARS}")
    return tuple(options)


def _check_text(field: str, text: object) -> None:
    if not isinstance(text, str) or not text:
        raise ValidationError(field, f"must be a non-empty string, got {echo(text)}")
    if len(text) > MAX_SPEC_CHARS:
        raise ValidationError(field, f"is {len(text)} characters; at most {MAX_SPEC_CHARS}")
    if "\x00" in text:
        raise ValidationError(field, "must not hold a NUL character (U+0000)")
