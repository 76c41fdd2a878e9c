"""The synthetic tasks the shipped tiny LLaDA was trained on, and their held-out sets.

Training (benchmarks/train_tiny.py), the quality benchmark (benchmarks/quality.py) and the CI
test share these generators so that all three see exactly the same formats. Each task makes
attention sparsity matter in its own way: `recall` must find one line in a long list (the
retained K/V must keep it), `copy` must attend to every prompt character in order, `add`
needs a few digits from a short prompt.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

TASKS = ("recall", "copy", "add")
CONTEXTS = (128, 256, 512, 1024, 2048)
HELD_OUT_SEED = 1_000_003  # training draws from seeds < 2**20 per worker; this stream is apart

BOS, EOS, MASK = "<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>"
SOH, EOH, EOT = "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"
# Tokens the chat wrapper adds around a question: BOS, 2x(SOH role EOH "\n\n"), EOT.
_WRAP_TOKENS = 1 + (1 + 4 + 1 + 2) + 1 + (1 + 9 + 1 + 2)

_RECALL_HEAD = "Remember these codes.\n"
_RECALL_TAIL = "\nWhat is the code for {key}?"
_RECALL_LINE = 11  # "abcd: 1234\n"


@dataclass(frozen=True)
class Example:
    task: str
    question: str
    answer: str
    context: int = 0  # target prompt length in tokens (recall), 0 for short tasks


def chat_prompt(question: str) -> str:
    """The LLaDA chat template rendered for one user turn, ready for the answer."""
    return f"{BOS}{SOH}user{EOH}\n\n{question.strip()}{EOT}{SOH}assistant{EOH}\n\n"


def prompt_tokens(question: str) -> int:
    """Token count of `chat_prompt(question)` under the byte tokenizer (ASCII questions)."""
    return len(question.strip().encode()) + _WRAP_TOKENS


def recall(rng: random.Random, context: int) -> Example:
    """Key-value recall: a list of `key: value` lines filling ~`context` prompt tokens.

    The answer restates the key as the list wrote it (`abcd: 1234`): the value then follows its
    key as in the list, the lookup a small model learns (find the earlier `abcd: `, copy what
    came after it), not a second hop back to the question.
    """
    fixed = _WRAP_TOKENS + len(_RECALL_HEAD) + len(_RECALL_TAIL.format(key="abcd")) - 1
    n = max(2, (context - fixed) // _RECALL_LINE)
    keys: list[str] = []
    seen: set[str] = set()
    while len(keys) < n:
        k = "".join(rng.choices(string.ascii_lowercase, k=4))
        if k not in seen:
            seen.add(k)
            keys.append(k)
    values = [f"{rng.randrange(10_000):04d}" for _ in keys]
    i = rng.randrange(n)
    lines = "\n".join(f"{k}: {v}" for k, v in zip(keys, values, strict=True))
    question = _RECALL_HEAD + lines + _RECALL_TAIL.format(key=keys[i])
    return Example("recall", question, f"{keys[i]}: {values[i]}", context)


def copy(rng: random.Random, max_chars: int = 48) -> Example:
    """Copy a random string of short lowercase "words" (no meaning, so no shortcut)."""
    target = rng.randint(8, max_chars)
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < target:
        words.append("".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 7))))
    text = " ".join(words)[:max_chars].strip()
    return Example("copy", f"Repeat exactly: {text}", text)


def add(rng: random.Random, max_digits: int = 4) -> Example:
    """Multi-digit addition of two numbers with 1..`max_digits` digits each."""
    a = rng.randrange(10 ** rng.randint(1, max_digits))
    b = rng.randrange(10 ** rng.randint(1, max_digits))
    return Example("add", f"What is {a} + {b}?", str(a + b))


def demo() -> Example:
    """The demo's question: look one code up in a fixed list of 30 (about 384 tokens)."""
    return recall(random.Random("dllmserve-demo"), 384)


def held_out(task: str, n: int, context: int = 0, seed: int = HELD_OUT_SEED) -> list[Example]:
    """`n` fixed examples of `task` (recall at `context` tokens), never seen in training."""
    rng = random.Random(f"{seed}-{task}-{context}")
    if task == "recall":
        return [recall(rng, context) for _ in range(n)]
    if task == "copy":
        return [copy(rng) for _ in range(n)]
    if task == "add":
        return [add(rng) for _ in range(n)]
    raise ValueError(f"unknown task {task!r}; known: {TASKS}")


def is_correct(example: Example, text: str) -> bool:
    """Exact match of the decoded answer (surrounding whitespace ignored)."""
    return text.strip() == example.answer
