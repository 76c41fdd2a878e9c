"""Compile a `StructuredOutput` for a vocabulary, once: the automata are cached by (constraint,
tokenizer fingerprint) in a bounded LRU, and a compile past its time limit is refused by name.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from dllmserve.errors import ValidationError
from dllmserve.structured.automaton import TokenAutomaton, lift
from dllmserve.structured.dfa import build_byte_dfa
from dllmserve.structured.schema import schema_to_regex
from dllmserve.structured.spec import StructuredOutput
from dllmserve.structured.vocab import TokenBytes

COMPILE_TIMEOUT_S = 10.0  # a constraint that takes longer is refused
MAX_DFA_STATES = 100_000
CACHE_SIZE = 64  # compiled automata kept (each a few MB at most for a 150k vocabulary)
JSON_UNSAFE = frozenset(b'"\\' + bytes(range(0x20)))  # what a JSON string must escape

_cache: OrderedDict[tuple, TokenAutomaton] = OrderedDict()
_lock = threading.Lock()


def compile_constraint(
    spec: StructuredOutput, tb: TokenBytes, timeout_s: float = COMPILE_TIMEOUT_S
) -> TokenAutomaton:
    """The token automaton of `spec` over `tb` (cached). Raises ValidationError naming the
    spec's field: a regex the library cannot compile, a schema it does not support, a compile
    over `timeout_s`, or a constraint no answer of this vocabulary matches."""
    key = (spec.key, tb.fingerprint)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    deadline = time.monotonic() + timeout_s
    regex = _regex(spec, deadline)
    dfa = build_byte_dfa(regex, spec.field, max(deadline - time.monotonic(), 0.0), MAX_DFA_STATES)
    automaton = lift(dfa, tb, spec.field, deadline)
    with _lock:
        _cache[key] = automaton
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return automaton


def cache_clear() -> None:
    with _lock:
        _cache.clear()


def _regex(spec: StructuredOutput, deadline: float) -> str:
    if spec.regex is not None:
        return _unanchored(spec.regex)
    if spec.choice is not None:
        return "|".join(_literal(c) for c in spec.choice)
    regex, patterns = schema_to_regex(spec.json_schema or "", spec.field)
    for pattern in patterns:
        _check_json_safe(pattern, spec.field, deadline)
    return regex


def _check_json_safe(pattern: str, field: str, deadline: float) -> None:
    """A string `pattern` must never write a raw quote, backslash or control character: the
    JSON text would break (the pattern sits between the string's quotes as it is)."""
    dfa = build_byte_dfa(pattern, field, max(deadline - time.monotonic(), 0.0), MAX_DFA_STATES)
    used = {b for b in range(256) if (dfa.trans[:, b] >= 0).any()}
    if used & JSON_UNSAFE:
        raise ValidationError(
            field,
            f"pattern {pattern!r} can match a quote, a backslash or a control "
            "character, which a JSON string must escape: exclude them from it",
        )


def _literal(text: str) -> str:
    """A regex matching exactly `text`: every character not a letter or digit escaped."""
    return "".join(c if c.isascii() and c.isalnum() else f"\\x{{{ord(c):X}}}" for c in text)


def _unanchored(regex: str) -> str:
    """The regex without an outer ^ / $ (the whole answer matches it anyway)."""
    if regex.startswith("^"):
        regex = regex[1:]
    if regex.endswith("$") and (len(regex[:-1]) - len(regex[:-1].rstrip("\\"))) % 2 == 0:
        regex = regex[:-1]
    return regex
