"""What a block-diffusion (LLaDA2) request may ask, checked once: the block part of
`inputs.resolve_request` (docs/design.md §4, §15).

Blocks are aligned to absolute positions from 0, so they depend on the prompt's length: block
i covers positions [i·B, (i+1)·B) and the first one denoised is P // B (the prompt's tail sits
in it). `ResolvedRequest.blocks` holds them as offsets into the generated canvas (the first may
start before 0, the last may end past gen_length). Pure and torch-free like `resolve_request`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from dllmserve.errors import ValidationError
from dllmserve.sampling_params import SamplingParams

if TYPE_CHECKING:
    from dllmserve.sparse.state import SparseConfig


def refuse_unsupported(params: SamplingParams, sparse: SparseConfig | None) -> None:
    """Options the official block-diffusion sampler has no counterpart for, by name."""
    if sparse is not None and sparse.enabled:
        raise ValidationError(
            "sparse_config",
            "is not supported on block-diffusion models: their exact block K/V cache already "
            "reads each earlier block once per step (docs/design.md §15)",
        )
    refused = {
        "cfg_scale": params.cfg_scale > 0,
        "remasking": params.remasking != "low_confidence",
        "schedule": params.schedule not in (None, "blocks"),
        "alg_temp": params.alg_temp > 0,
        "logits_eos_inf": params.logits_eos_inf,
        "confidence_eos_eot_inf": params.confidence_eos_eot_inf,
    }
    for name, bad in refused.items():
        if bad:
            raise ValidationError(
                f"sampling_params.{name}",
                f"is not supported on block-diffusion models (got {getattr(params, name)!r}); "
                "LLaDA2's sampler takes temperature, top_p, top_k, threshold, steps_per_block, "
                "minimal_topk, eos_early_stop, editing_threshold and structured_output",
            )
    if params.structured_output is not None and params.editing_threshold is not None:
        raise ValidationError(
            "sampling_params.structured_output",
            "is not supported with editing_threshold on block-diffusion models: LLaDA2.1's "
            "edits rewrite committed tokens, and a constrained canvas keeps every committed "
            "token (docs/structured_outputs.md)",
        )


def refuse_block_fields(params: SamplingParams) -> None:
    """The block-diffusion fields on a model that is not one, by name."""
    fields = {
        "minimal_topk": params.minimal_topk != 1,
        "eos_early_stop": params.eos_early_stop,
        "editing_threshold": params.editing_threshold is not None,
    }
    for name, bad in fields.items():
        if bad:
            raise ValidationError(
                f"sampling_params.{name}",
                f"applies to block-diffusion models (LLaDA2) only, got {getattr(params, name)!r}",
            )


def block_layout(
    params: SamplingParams,
    prompt_len: int | None,
    *,
    max_len: int,
    block_length: int,
    page_size: int,
    n_layers: int,
) -> dict:
    """The `ResolvedRequest` fields of a block-diffusion request: its blocks, steps, tokens per
    iteration and pages (`block_length`: the model's, unless the request gives one)."""
    known_len = prompt_len
    P = 1 if prompt_len is None else prompt_len
    G = params.gen_length
    B = params.block_length or block_length
    n_blocks = -(-(P + G) // B)
    total = n_blocks * B
    if total > max_len:
        raise ValidationError(
            "sampling_params.gen_length",
            f"prompt ({P} tokens) + gen_length ({G}), rounded up to whole blocks of {B}, is "
            f"{total} positions; the model's maximum length is {max_len}",
        )
    first = P // B
    blocks = tuple((b * B - P, (b + 1) * B - P) for b in range(first, n_blocks))
    per_block = params.steps_per_block or max(1, params.steps // len(blocks))
    steps = min(per_block, G // params.minimal_topk)
    return dict(
        prompt_len=known_len,
        params=replace(params, schedule="blocks"),
        sparse=None,
        block_length=B,
        blocks=blocks,
        block_steps=(steps,) * len(blocks),
        layer_ratios=(1.0,) * n_layers,
        lanes=1,
        tokens_per_iteration=max(first + 1, 2) * B,  # the prompt's blocks with the first one
        pages_per_layer=(-(-total // page_size),) * n_layers,
    )
