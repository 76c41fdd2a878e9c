"""The block-diffusion sampling fields and their resolution, without a model: SamplingParams
checks each field with its name and range; `resolve_request` aligns blocks to absolute positions,
caps the steps at gen_length // minimal_topk, sizes the pages and the token budget, refuses what
LLaDA2's sampler has no counterpart for (sparse attention among them; a structured output with
LLaDA2.1's edits, or on a canvas shorter than its shortest answer) and the block fields on
other models; `steps_per_block` on LLaDA is steps = steps_per_block x blocks."""

from __future__ import annotations

import pytest

from dllmserve import SamplingParams, SparseConfig
from dllmserve.engine.inputs import ModelLimits, resolve_request
from dllmserve.errors import CapacityError, ValidationError
from dllmserve.structured import StructuredOutput

MASK = 299


def limits(**kw) -> ModelLimits:
    base = dict(max_len=512, n_layers=3, vocab_size=300, mask_token_id=MASK,
                shifted_logits=False, default_schedule="blocks", max_num_batched_tokens=4096,
                page_size=4, num_cache_pages=1000, block_diffusion=True,
                default_block_length=32)  # fmt: skip
    return ModelLimits(**{**base, **kw})


@pytest.mark.parametrize(
    "kw,field,text",
    [(dict(steps_per_block=0), "steps_per_block", "[1, 128]"),
     (dict(steps=8, steps_per_block=4), "steps_per_block", "not both"),
     (dict(minimal_topk=0), "minimal_topk", "[1, 128]"),
     (dict(gen_length=8, steps=8, minimal_topk=9), "minimal_topk", "[1, 8]"),
     (dict(editing_threshold=1.5), "editing_threshold", "[0, 1]"),
     (dict(eos_early_stop="yes"), "eos_early_stop", "bool")],
)  # fmt: skip
def test_fields_checked_with_name_and_range(kw, field, text):
    with pytest.raises(ValidationError) as e:
        SamplingParams(**kw)
    assert e.value.field == f"sampling_params.{field}" and text in str(e.value)


def test_blocks_aligned_to_absolute_positions():
    spec = resolve_request(limits(), SamplingParams(gen_length=12, steps_per_block=8,
                           block_length=4), prompt_ids=list(range(1, 7)))  # fmt: skip
    # P = 6: blocks [4, 8) (the prompt's tail), [8, 12), [12, 16) (2 positions past P + G)
    assert spec.blocks == ((-2, 2), (2, 6), (6, 10), (10, 14))
    assert spec.block_steps == (8,) * 4 and spec.block_length == 4
    assert spec.pages_per_layer == (5,) * 3  # 20 positions / page_size 4, every layer
    assert spec.tokens_per_iteration == 8  # the prompt's full block with the first one


def test_default_block_and_minimal_topk_cap():
    spec = resolve_request(limits(), SamplingParams(gen_length=40, steps_per_block=32,
                           minimal_topk=4), prompt_ids=[1] * 70)  # fmt: skip
    assert spec.block_length == 32 and spec.blocks[0] == (-6, 26)
    assert spec.block_steps == (10,) * 2  # min(32, 40 // 4)
    assert spec.tokens_per_iteration == 3 * 32
    # steps (not per block): spread over the blocks, as for LLaDA
    spec = resolve_request(limits(), SamplingParams(gen_length=40, steps=20), prompt_ids=[1] * 70)
    assert spec.block_steps == (10, 10)


def test_too_long_and_too_big_refused():
    with pytest.raises(ValidationError, match="whole blocks of 32"):
        resolve_request(limits(max_len=96), SamplingParams(gen_length=40, steps=40),
                        prompt_ids=[1] * 60)  # fmt: skip
    with pytest.raises(CapacityError, match="cache pages"):
        resolve_request(limits(num_cache_pages=10), SamplingParams(gen_length=40, steps=40),
                        prompt_ids=[1] * 60)  # fmt: skip


@pytest.mark.parametrize(
    "kw,field",
    [(dict(cfg_scale=1.0), "cfg_scale"), (dict(remasking="random"), "remasking"),
     (dict(schedule="dream"), "schedule"), (dict(logits_eos_inf=True), "logits_eos_inf")],
)  # fmt: skip
def test_unsupported_options_refused_by_name(kw, field):
    with pytest.raises(ValidationError) as e:
        resolve_request(limits(), SamplingParams(gen_length=16, steps=16, **kw), prompt_ids=[1])
    assert e.value.field == f"sampling_params.{field}"


def test_structured_output_runs_but_not_with_edits_nor_on_a_short_canvas():
    so = StructuredOutput(choice=["yes", "no"])
    spec = resolve_request(limits(), SamplingParams(gen_length=16, steps=16, structured_output=so),
                           prompt_ids=[1] * 5, min_gen_length=3)  # fmt: skip
    assert spec.params.structured_output == so and spec.blocks[0] == (-5, 27)
    edit = SamplingParams(gen_length=16, steps=16, structured_output=so, editing_threshold=0.5)
    with pytest.raises(ValidationError) as e:
        resolve_request(limits(), edit, prompt_ids=[1])
    assert e.value.field == "sampling_params.structured_output"
    assert "editing_threshold" in e.value.reason
    short = SamplingParams(gen_length=16, steps=16, structured_output=so)
    with pytest.raises(ValidationError) as e:
        resolve_request(limits(), short, prompt_ids=[1], min_gen_length=17)
    assert e.value.field == "sampling_params.gen_length" and "at least 17" in e.value.reason


def test_sparse_attention_refused_by_name():
    with pytest.raises(ValidationError) as e:
        resolve_request(limits(), SamplingParams(gen_length=16, steps=16),
                        SparseConfig(retention_ratio=0.5), prompt_ids=[1])  # fmt: skip
    assert e.value.field == "sparse_config" and "block-diffusion" in str(e.value)


@pytest.mark.parametrize(
    "kw,field",
    [(dict(minimal_topk=2), "minimal_topk"), (dict(eos_early_stop=True), "eos_early_stop"),
     (dict(editing_threshold=0.9), "editing_threshold")],
)  # fmt: skip
def test_block_fields_refused_on_other_models(kw, field):
    lim = limits(block_diffusion=False, default_block_length=None)
    with pytest.raises(ValidationError) as e:
        resolve_request(lim, SamplingParams(gen_length=16, steps=16, **kw), prompt_ids=[1])
    assert e.value.field == f"sampling_params.{field}"


def test_steps_per_block_on_llada_is_steps_over_blocks():
    lim = limits(block_diffusion=False, default_block_length=None)
    spec = resolve_request(lim, SamplingParams(gen_length=32, block_length=8, steps_per_block=3),
                           prompt_ids=[1, 2])  # fmt: skip
    assert spec.params.steps == 12 and spec.block_steps == (3,) * 4


def test_max_steps_bounds_every_block_diffusion_request():
    """The scheduler's bound on a request's steps (Attach beyond it is refused) holds whatever
    the prompt: steps per block x blocks, with edits a mask a step plus 16 a block."""
    sp = SamplingParams(gen_length=64, steps_per_block=32, block_length=16)
    spec = resolve_request(limits(), sp, prompt_ids=[1] * 7)
    assert sum(spec.block_steps) == 5 * 32 <= sp.max_steps
    edit = SamplingParams(gen_length=16, steps_per_block=4, editing_threshold=0.5)
    assert edit.max_steps >= 2 * (32 + 17)  # two blocks of 32 (the default) when P > 16
