"""JSON validity with and without structured outputs on the shipped tiny LLaDA (the demo model):
for held-out questions, the share of answers that parse and validate against a schema, free and
constrained, and the share whose value is right where the task has one (addition's sum).

    python benchmarks/json_validity.py --n 16          # CPU, about a minute

Greedy, block length 32, steps = gen_length, the same prompts both ways. The model was never
trained to write JSON: its free answers show what a constraint is up against.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass

import jsonschema

from dllmserve import LLM, SamplingParams
from dllmserve.assets import default_model_path, tasks
from dllmserve.structured import StructuredOutput

INTEGER = {"type": "integer", "minimum": 0, "maximum": 20000}
SUM = {"type": "object", "properties": {"sum": INTEGER}, "required": ["sum"]}
CODE = {
    "type": "object",
    "properties": {"key": {"type": "string", "pattern": "[a-z]{4}"},
                   "code": {"type": "string", "pattern": "[0-9]{4}"}},
    "required": ["key", "code"],
}  # fmt: skip
TOOL_CALL = {
    "type": "object",
    "properties": {
        "name": {"enum": ["lookup", "add"]},
        "arguments": {"type": "object", "properties": {"query": {"type": "string", "maxLength": 8}},
                      "required": ["query"]},
    },
    "required": ["name", "arguments"],
}  # fmt: skip


@dataclass(frozen=True)
class Row:
    name: str
    task: str
    context: int
    schema: dict
    gen: int
    value: Callable[[object], str] | None  # the answer's value, compared with the example's


ROWS = [
    Row("addition, bare integer", "add", 0, INTEGER, 32, lambda v: str(v)),
    Row('addition, {"sum": n}', "add", 0, SUM, 32, lambda v: str(v["sum"])),
    Row('recall@128, {"key", "code"}', "recall", 128, CODE, 64,
        lambda v: f"{v['key']}: {v['code']}"),
    Row("recall@128, tool call", "recall", 128, TOOL_CALL, 64, None),
]  # fmt: skip


def judge(row: Row, example: tasks.Example, text: str) -> tuple[bool, bool]:
    """(the answer parses and validates, its value is the task's answer)."""
    try:
        value = json.loads(text)
        jsonschema.validate(value, row.schema)
    except (ValueError, jsonschema.ValidationError):
        return False, False
    return True, row.value is not None and row.value(value) == example.answer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=16, help="held-out examples per row")
    a = ap.parse_args()
    llm = LLM(default_model_path())
    print(
        "| task, schema | n | valid, free | valid, constrained | right, free | right, constrained |"
    )
    print("|---|---|---|---|---|---|")
    for row in ROWS:
        examples = tasks.held_out(row.task, a.n, row.context)
        prompts = [tasks.chat_prompt(ex.question) for ex in examples]
        base = dict(gen_length=row.gen, steps=row.gen, block_length=32, temperature=0.0)
        so = StructuredOutput(json_schema=row.schema)
        cells = []
        for params in (SamplingParams(**base), SamplingParams(**base, structured_output=so)):
            outs = llm.generate(prompts, params, use_tqdm=False)
            cells.append([judge(row, ex, o["text"]) for ex, o in zip(examples, outs, strict=True)])
        valid = [f"{sum(v for v, _ in c) / a.n:.0%}" for c in cells]
        right = [f"{sum(r for _, r in c) / a.n:.0%}" if row.value else "–" for c in cells]
        print(f"| {row.name} | {a.n} | {valid[0]} | {valid[1]} | {right[0]} | {right[1]} |",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
