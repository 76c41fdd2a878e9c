"""Scoring a model on the shipped tasks (`dllmserve.assets.tasks`): the helpers of
benchmarks/quality.py and the CI check of the shipped tiny model."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dllmserve import LLM, SamplingParams
from dllmserve.assets import tasks

MASK_RATIOS = (0.1, 0.3, 0.5, 0.7, 0.9)


class OneSequenceAttention:
    """Plain bidirectional attention over the one sequence of a forward (no cache, no
    selection): the reference forward of the masked loss and of benchmarks/fp8_accuracy.py."""

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        q, k, v = (t.transpose(0, 1)[None] for t in (q, k, v))
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)[0].transpose(0, 1)

    def select(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        return None

    def kv_target(self, layer: int) -> None:
        return None


def masked_loss(llm: LLM, examples: list[tasks.Example], seed: int = 0) -> float:
    """Mean cross-entropy (nats) per masked answer token over `MASK_RATIOS`, dense attention.

    The perplexity-style figure of a masked-diffusion model: how well it fills in the answer
    given the prompt and the unmasked rest of the answer (the answer's EOT included).
    """
    eng = llm.engine
    model, dev = eng.model, eng.device
    gen = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for ex in examples:
        p = eng.tokenize(tasks.chat_prompt(ex.question))
        a = eng.tokenize(ex.answer) + [eng.tokens.eot]
        ids = torch.tensor(p + a)
        for t in MASK_RATIOS:
            m = torch.rand(len(a), generator=gen) < t
            m[torch.randint(len(a), (1,), generator=gen)] = True  # at least one masked
            x = ids.clone()
            x[len(p) :][m] = eng.tokens.mask
            pos = torch.arange(len(ids))
            h = model.forward(x.to(dev), pos.to(dev), OneSequenceAttention())
            logits = model.logits(h[len(p) :][m.to(dev)]).float()
            total += F.cross_entropy(logits, torch.tensor(a)[m].to(dev), reduction="sum").item()
            count += int(m.sum())
    return total / count


def answer_format_ok(example: tasks.Example, text: str) -> bool:
    """The answer has the task's shape (`key: 4 digits`, a number, letters and spaces)."""
    t = text.strip()
    if example.task == "recall":
        key, sep, value = t.partition(": ")
        return bool(sep) and len(key) == 4 and key.isalpha() and len(value) == 4 and value.isdigit()
    if example.task == "add":
        return t.isdigit()
    return bool(t) and all(c.islower() or c == " " for c in t)


# The CI check of the shipped model (tests/test_quality.py); `benchmarks/quality.py
# --record-ci` writes its figures to the model's ci_eval.json. Small, so it runs in seconds
# on two CPU cores: one batch of 24 requests, lookups in lists of 10 and of 40 lines and sums.
CI_N = 8  # examples per group
CI_PARAMS = SamplingParams(temperature=0.0, gen_length=16, steps=8, block_length=16)


def ci_examples() -> list[tasks.Example]:
    return (
        tasks.held_out("recall", CI_N, 128)
        + tasks.held_out("recall", CI_N, 512)
        + tasks.held_out("add", CI_N)
    )


# A run may miss the recorded rates by two examples (BLAS rounding flips a near-tie), the
# loss, a deterministic forward, by 0.05 nats.
CI_TOLERANCE = 2 / (3 * CI_N)
CI_LOSS_TOLERANCE = 0.05


def ci_metrics(llm: LLM) -> dict[str, float]:
    """Exact-match accuracy, answer-shape rate, stop rate and masked loss on `ci_examples`."""
    examples = ci_examples()
    prompts = [tasks.chat_prompt(e.question) for e in examples]
    outs = llm.generate(prompts, CI_PARAMS, use_tqdm=False)
    n = len(examples)
    pairs = list(zip(examples, outs, strict=True))
    return {
        "accuracy": sum(tasks.is_correct(e, o["text"]) for e, o in pairs) / n,
        "answer_format": sum(answer_format_ok(e, o["text"]) for e, o in pairs) / n,
        "stopped": sum(o["finish_reason"] == "stop" for o in outs) / n,
        "masked_loss": masked_loss(llm, examples),
    }
