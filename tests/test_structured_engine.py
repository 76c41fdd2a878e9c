"""Structured outputs through `LLM` on tiny random-weight checkpoints, whose unconstrained
answers are garbage: every constrained answer parses and validates, under LLaDA's blocks and
Dream's schedule, greedy and sampled, with a threshold and sparse attention; a request's tokens
do not depend on its batch neighbours, constrained or not (bit-exact on CPU fp32); and the
refusals name the field before any request runs."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import torch

from dllmserve import LLM, SamplingParams, SparseConfig
from dllmserve.engine.engine import Engine
from dllmserve.errors import ValidationError
from dllmserve.structured import StructuredOutput
from dllmserve.structured.dp import best_assignment

TOOL_CALL = {
    "type": "object",
    "properties": {
        "name": {"enum": ["get_weather", "get_time"]},
        "arguments": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 10},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "days"],
        },
    },
    "required": ["name", "arguments"],
}
ITEMS = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99},
         "minItems": 2, "maxItems": 4}  # fmt: skip
PROMPT = [5, 17, 33, 2, 9, 11]


@pytest.fixture(scope="module")
def llm(llada_dir):
    return LLM(llada_dir)


def params(**kw) -> SamplingParams:
    base = dict(gen_length=96, steps=48, block_length=32, temperature=0.0, seed=1)
    return SamplingParams(**{**base, **kw})


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"temperature": 0.8},
        {"threshold": 0.3, "temperature": 0.5},
        {"remasking": "random", "temperature": 0.5},
        {"stop_at_eos": False, "steps": 96},
        {"cfg_scale": 1.5, "temperature": 0.5},
        {"top_k": 3, "temperature": 1.0, "logits_eos_inf": True},
    ],
)
def test_llada_answers_validate(llm, kw):
    specs = [(TOOL_CALL, 96), (ITEMS, 32)]
    prompts = [PROMPT, PROMPT[::-1]]
    outs = llm.generate(
        prompts * 2,
        [
            params(
                structured_output=StructuredOutput(json_schema=s),
                gen_length=g,
                steps=min(kw.get("steps", 48), g),
                block_length=min(32, g),
                seed=i,
                **{k: v for k, v in kw.items() if k != "steps"},
            )  # fmt: skip
            for i, (s, g) in enumerate(specs * 2)
        ],
        use_tqdm=False,
    )
    for out, (schema, _) in zip(outs, specs * 2, strict=True):
        jsonschema.validate(json.loads(out["text"]), schema)


def test_unconstrained_output_of_the_same_model_is_not_json(llm):
    out = llm.generate([PROMPT], params(), use_tqdm=False)[0]
    with pytest.raises(ValueError):
        json.loads(out["text"])


def test_regex_and_choice_with_sparse_attention(llm):
    sparse = SparseConfig(retention_ratio=0.5, delay_step=1, default_block_len=16)
    specs = [StructuredOutput(regex=r"[A-Z][a-z]{2,6}-[0-9]{2}"),
             StructuredOutput(choice=["yes", "no", "it depends"])]  # fmt: skip
    outs = llm.generate(
        [PROMPT, PROMPT],
        [params(gen_length=32, steps=16, block_length=16, structured_output=s) for s in specs],
        sparse_configs=sparse,
        use_tqdm=False,
    )
    assert re.fullmatch(r"[A-Z][a-z]{2,6}-[0-9]{2}", outs[0]["text"])
    assert outs[1]["text"] in ("yes", "no", "it depends")


def test_dream_schedule_answers_validate(dream_dir):
    items = StructuredOutput(json_schema=ITEMS)
    base = dict(gen_length=48, steps=24, block_length=None, seed=3, structured_output=items)
    runs = [
        params(**base, temperature=0.0, remasking="maskgit_plus"),
        params(**base, temperature=0.7, remasking="maskgit_plus", top_p=0.9),
        params(**{**base, "block_length": 16}, temperature=0.5, alg_temp=0.5, remasking="entropy"),
        params(**base, temperature=0.5, remasking="origin"),
    ]
    outs = LLM(dream_dir).generate([PROMPT] * len(runs), runs, use_tqdm=False)
    for out in outs:
        jsonschema.validate(json.loads(out["text"]), ITEMS)


def test_batch_invariance_with_and_without_constrained_neighbours(llada_dir):
    target = params(temperature=0.7, seed=5, structured_output=StructuredOutput(
        json_schema=TOOL_CALL))  # fmt: skip
    plain = params(temperature=0.7, seed=6, gen_length=64)
    items = StructuredOutput(json_schema=ITEMS)
    other = params(seed=7, gen_length=32, steps=16, structured_output=items)
    alone = LLM(llada_dir).generate([PROMPT], target, use_tqdm=False)[0]["token_ids"]
    mixed = LLM(llada_dir).generate(
        [PROMPT[:3], PROMPT, PROMPT[1:]], [plain, target, other], use_tqdm=False
    )
    assert mixed[1]["token_ids"] == alone
    plain_alone = LLM(llada_dir).generate([PROMPT[:3]], plain, use_tqdm=False)[0]
    assert mixed[0]["token_ids"] == plain_alone["token_ids"]


def test_too_short_a_canvas_is_refused_before_anything_runs(llm):
    ok = params(structured_output=StructuredOutput(json_schema=ITEMS))
    short = params(gen_length=8, steps=8, block_length=8,
                   structured_output=StructuredOutput(json_schema=TOOL_CALL))  # fmt: skip
    with pytest.raises(ValidationError) as e:
        llm.generate([PROMPT, PROMPT], [ok, short], use_tqdm=False)
    assert e.value.field == "sampling_params.gen_length"
    assert re.search(r"at least \d+ for this structured_output", e.value.reason)
    assert not llm.engine.has_unfinished()


def test_an_uncompilable_regex_is_refused_by_name(llm):
    bad = params(structured_output=StructuredOutput(regex="(ab"))
    with pytest.raises(ValidationError) as e:
        llm.generate([PROMPT], bad, use_tqdm=False)
    assert e.value.field == "sampling_params.structured_output.regex"


def test_every_step_leaves_a_completable_canvas_and_streams_a_prefix(llada_dir):
    engine = Engine.from_pretrained(llada_dir)
    p = params(temperature=0.6, threshold=0.4, structured_output=StructuredOutput(
        json_schema=TOOL_CALL))  # fmt: skip
    engine.add_request("r", PROMPT, p)
    automaton = engine.batcher.waiting[0].constraint.automaton
    canvas, streamed, texts = [-1] * p.gen_length, "", []
    while engine.has_unfinished():
        for u in engine.step():
            for pos, tok in zip(u.positions, u.token_ids, strict=True):
                canvas[pos] = tok
            scores = torch.zeros((p.gen_length, engine.model.cfg.vocab_size))
            _, feasible = best_assignment(
                automaton, scores, torch.tensor(canvas), automaton.start, 0
            )
            assert bool(feasible), "a committed token broke the constraint"
            streamed += u.text_delta
            texts.append(streamed)
    assert -1 not in canvas
    assert all(streamed.startswith(t) for t in texts)
    jsonschema.validate(json.loads(streamed), TOOL_CALL)


def test_block_diffusion_and_editing_are_refused_by_name(llm, tmp_path):
    """LLaDA2.1's editing rewrites committed tokens, which a constrained canvas never does:
    structured_output with editing_threshold is refused on block-diffusion models, and
    editing_threshold (a block-diffusion field) on the other models, by name (LLaDA2 runs
    structured outputs without edits: tests/test_structured_block.py)."""
    from dllmserve.testing.tiny_llada2 import write_tiny_llada2

    so = StructuredOutput(choice=["yes", "no"])
    with pytest.raises(ValidationError) as e:
        llm.generate([PROMPT], params(structured_output=so, editing_threshold=0.5))
    assert e.value.field == "sampling_params.editing_threshold"
    l2 = LLM(write_tiny_llada2(tmp_path / "l2", seed=2), num_cache_pages=64, page_size=4)
    sp = SamplingParams(gen_length=32, steps=32, structured_output=so, editing_threshold=0.5)
    with pytest.raises(ValidationError) as e:
        l2.generate([PROMPT], sp)
    assert e.value.field == "sampling_params.structured_output"
    assert "block-diffusion" in e.value.reason
