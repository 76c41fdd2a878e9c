"""Compile time of a tool-call JSON schema for a LLaDA-8B-sized vocabulary (126 464 ids), on
the CPU: a synthetic byte-level vocabulary (the 256 bytes, then the most frequent word, space
+ word, number and punctuation pieces of this machine's Python sources, then made-up word pieces
where those run out) stands in for the real tokenizer, which is not shipped. Prints the compile
time (cold, then cached) and the automaton's size.
Usage: python benchmarks/structured_compile.py [--vocab 126464]"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import re
import string
import sysconfig
import time
from pathlib import Path

import numpy as np

from dllmserve.structured import StructuredOutput
from dllmserve.structured.compiler import compile_constraint
from dllmserve.structured.dfa import build_byte_dfa
from dllmserve.structured.vocab import TokenBytes

TOOL_CALL = {
    "type": "object",
    "properties": {
        "name": {"enum": ["get_weather", "get_forecast", "search_flights", "book_hotel"]},
        "arguments": {
            "type": "object",
            "properties": {
                "location": {"type": "string"},
                "unit": {"enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 14},
                "include_hourly": {"type": "boolean"},
                "date": {"type": "string", "format": "date"},
                "passengers": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
            },
            "required": ["location", "unit", "days"],
        },
    },
    "required": ["name", "arguments"],
}  # fmt: skip
# The same with bounded strings: every character count up to maxLength is a DFA state that
# lets almost every token through, so the lift walks ~100x more (state, token) pairs.
BOUNDED = json.loads(
    json.dumps(TOOL_CALL)
    .replace('"location": {"type": "string"}', '"location": {"type": "string", "maxLength": 64}')
    .replace('"items": {"type": "string"}', '"items": {"type": "string", "maxLength": 32}')
)
PIECE = re.compile(rb" ?[A-Za-z]+| ?[0-9]{1,3}| ?[^A-Za-z0-9\s]+|\s+")


def synthetic_vocab(size: int) -> TokenBytes:
    counts: collections.Counter[bytes] = collections.Counter()
    for path in Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"):
        counts.update(PIECE.findall(path.read_bytes()))
        if len(counts) > 2 * size:
            break
    pieces = [bytes([b]) for b in range(256)]
    pieces += [p for p, _ in counts.most_common() if len(p) > 1][: size - 256 - 2]
    pieces += _filler(size - 2 - len(pieces), set(pieces))
    lengths = np.array([len(p) for p in pieces])
    return TokenBytes(
        ids=np.arange(len(pieces), dtype=np.int64),
        data=np.frombuffer(b"".join(pieces), dtype=np.uint8),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        vocab_size=len(pieces) + 2,
        stop_ids=(len(pieces), len(pieces) + 1),
        fingerprint=f"synthetic-{size}",
    )


def _filler(count: int, have: set[bytes]) -> list[bytes]:
    """`count` more word pieces (space + 3, then 4 lowercase letters) where this machine's
    sources have fewer distinct pieces than asked: the vocabulary has its size everywhere."""
    out: list[bytes] = []
    for n in (3, 4):
        for letters in itertools.product(string.ascii_lowercase.encode(), repeat=n):
            if len(out) >= count:
                return out
            piece = b" " + bytes(letters)
            if piece not in have:
                out.append(piece)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=126464)
    ap.add_argument("--timeout", type=float, default=300.0, help="the compile limit, seconds")
    args = ap.parse_args()
    tb = synthetic_vocab(args.vocab)
    print(f"vocabulary {tb.vocab_size} ids ({len(tb.ids)} answer tokens)")
    t0 = time.perf_counter()
    build_byte_dfa("a", "warm-up", 60.0, 10)  # a trivial child: the interpreter's start
    print(f"compile child start: {time.perf_counter() - t0:.2f} s (each compile pays it)")
    for name, schema in (("tool call", TOOL_CALL), ("tool call, bounded strings", BOUNDED)):
        spec = StructuredOutput(json_schema=schema)
        t0 = time.perf_counter()
        a = compile_constraint(spec, tb, timeout_s=args.timeout)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        compile_constraint(spec, tb)
        cached = time.perf_counter() - t0
        print(f"{name}: compile {cold:.2f} s cold, {cached * 1e6:.0f} us cached; "
              f"{a.n_states} states, {a.n_classes} token classes, {len(a.src)} edges, "
              f"shortest answer {a.min_length} tokens")  # fmt: skip


if __name__ == "__main__":
    main()
