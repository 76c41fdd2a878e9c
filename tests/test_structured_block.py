"""Structured outputs on a block-diffusion model (LLaDA2) through `LLM`, on the tiny
random-weight LLaDA2 whose unconstrained answers are garbage. Its blocks are aligned to absolute
positions, so the first one holds the prompt's tail and the last one runs past the answer: the
DP runs over each block's answer window only. Every constrained answer (the text up to the
first EOS) validates or fullmatches, greedy and sampled, with a threshold and without; a
request's tokens do not depend on its neighbours; a too-short canvas and structured_output with
LLaDA2.1's editing_threshold are refused by name."""

from __future__ import annotations

import dataclasses
import json
import re

import jsonschema
import pytest
import torch

from dllmserve import LLM, SamplingParams
from dllmserve.engine import model_runner
from dllmserve.errors import ValidationError
from dllmserve.structured import StructuredOutput
from dllmserve.testing.tiny_llada2 import write_tiny_llada2

OBJECT = {
    "type": "object",
    "properties": {
        "kind": {"enum": ["ab", "c"]},
        "n": {"type": "integer", "minimum": 1, "maximum": 12},
        "s": {"type": "string", "maxLength": 3},
    },
    "required": ["kind", "n", "s"],
}
ARRAY = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99},
         "minItems": 1, "maxItems": 3}  # fmt: skip
ANY_OF = {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 50}, {"type": "boolean"}]}
OPTIONAL = {"type": "object", "properties": {"a": {"type": "boolean"},
            "b": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["a"]}  # fmt: skip
SCHEMAS = [OBJECT, ARRAY, ANY_OF, OPTIONAL]
REGEX = r"[A-Z][a-z]{1,4}-[0-9]{2}"
CHOICES = ["yes", "no", "it depends"]
# prompts of 5 and 11 tokens: the first block (8) holds their tails (5 and 3 positions)
PROMPTS = [[5, 17, 33, 2, 9], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50]]
SPECS = [StructuredOutput(json_schema=s) for s in SCHEMAS]
SPECS += [StructuredOutput(regex=REGEX), StructuredOutput(choice=CHOICES)]


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    path = write_tiny_llada2(tmp_path_factory.mktemp("l2"), seed=2)
    return LLM(path, num_cache_pages=512, page_size=4)


def params(**kw) -> SamplingParams:
    # gen_length 37: not a multiple of the block, so the last block runs past the answer
    base = dict(gen_length=37, block_length=8, steps_per_block=8, temperature=0.0, seed=1)
    return SamplingParams(**{**base, **kw})


def check(text: str, spec: StructuredOutput) -> None:
    if spec.json_schema is not None:
        schema = spec.json_schema
        schema = json.loads(schema) if isinstance(schema, str) else schema
        jsonschema.validate(json.loads(text), schema)
    elif spec.regex is not None:
        assert re.fullmatch(spec.regex, text), text
    else:
        assert text in spec.choice, text


@pytest.mark.parametrize(
    "kw",
    [{}, {"threshold": 0.5}, {"temperature": 1.0}, {"temperature": 1.0, "threshold": 0.3},
     {"temperature": 0.8, "top_k": 5, "top_p": 0.9, "steps_per_block": 3},
     {"eos_early_stop": True, "threshold": 0.5, "minimal_topk": 8}],
)  # fmt: skip
def test_answers_validate(llm, kw):
    prompts = [PROMPTS[i % 2] for i in range(len(SPECS))]
    runs = [params(structured_output=s, seed=i, **kw) for i, s in enumerate(SPECS)]
    outs = llm.generate(prompts, runs, use_tqdm=False)
    for out, spec in zip(outs, SPECS, strict=True):
        check(out["text"], spec)
        assert len(out["token_ids"]) == 37


def test_unconstrained_output_of_the_same_model_is_not_json(llm):
    out = llm.generate([PROMPTS[0]], params(), use_tqdm=False)[0]
    with pytest.raises(ValueError):
        json.loads(out["text"])


def test_batch_invariance_with_and_without_constrained_neighbours(llm):
    target = params(temperature=0.7, seed=5, threshold=0.4, structured_output=SPECS[0])
    plain = params(temperature=0.7, seed=6, gen_length=21)
    other = params(seed=7, gen_length=29, structured_output=SPECS[1])
    alone = llm.generate([PROMPTS[0]], target, use_tqdm=False)[0]["token_ids"]
    prompts, runs = [PROMPTS[1], PROMPTS[0], PROMPTS[1][2:]], [plain, target, other]
    mixed = llm.generate(prompts, runs, use_tqdm=False)
    assert mixed[1]["token_ids"] == alone
    for out, prompt, p in zip(mixed, prompts, runs, strict=True):
        assert out["token_ids"] == llm.generate([prompt], p, use_tqdm=False)[0]["token_ids"]


def test_too_short_a_canvas_is_refused_by_name(llm):
    short = params(gen_length=9, structured_output=SPECS[0])
    with pytest.raises(ValidationError) as e:
        llm.generate([PROMPTS[0], PROMPTS[1]], [params(), short], use_tqdm=False)
    assert e.value.field == "sampling_params.gen_length"
    assert re.search(r"at least \d+ for this structured_output", e.value.reason)
    assert not llm.engine.has_unfinished()


def test_editing_threshold_is_refused_by_name(llm):
    p = SamplingParams(gen_length=16, steps=16, structured_output=SPECS[5], editing_threshold=0.5)
    with pytest.raises(ValidationError) as e:
        llm.generate([PROMPTS[0]], p, use_tqdm=False)
    assert e.value.field == "sampling_params.structured_output"
    assert "editing_threshold" in e.value.reason


@pytest.mark.parametrize("kw", [{}, {"temperature": 1.0, "threshold": 0.2}, {"temperature": 0.7,
                         "top_k": 40, "top_p": 0.95}])  # fmt: skip
def test_where_the_constraint_allows_the_free_draw_the_dp_takes_it(llm, monkeypatch, kw):
    """With the logits pushed onto lowercase letters (which `[a-z]+` allows anywhere), the
    constrained step equals the free one at the masks, tokens, confidences and commits: the DP
    scores with the sampler's own filtered logits and Gumbel noise (same seed, step, absolute
    positions) and ranks by the same softmax; the prompt's tail and the last block's tail stay
    free."""
    real, seen = model_runner.sample_block, []
    lower = torch.zeros(llm.engine.model.cfg.vocab_size)
    letters = llm.engine.tokenizer("abcdefghijklmnopqrstuvwxyz", add_special_tokens=False)
    lower[letters["input_ids"]] = 20.0

    def both(logits, b, e, mask_id, eos_id):
        logits = logits + lower.to(logits.dtype)
        free = real(logits, dataclasses.replace(b, constraint=None), e, mask_id, eos_id)
        got = real(logits, b, e, mask_id, eos_id)
        masked = b.eligible  # elsewhere the DP's x0 is the committed token, not a new draw
        for x, y in zip(got, free, strict=True):
            assert torch.equal(x[masked], y[masked])
        assert torch.equal(got.commit, free.commit)
        seen.append(b.constraint is not None)
        return got

    monkeypatch.setattr(model_runner, "sample_block", both)
    so = StructuredOutput(regex="[a-z]{1,60}")
    outs = llm.generate(PROMPTS, params(structured_output=so, **kw), use_tqdm=False)
    assert all(seen) and len(seen) >= 5
    assert all(re.fullmatch("[a-z]{37}", out["text"]) for out in outs)
