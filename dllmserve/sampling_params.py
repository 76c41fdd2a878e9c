"""Sampling parameters of one generation request: the official LLaDA sampler and Dream's."""

from __future__ import annotations

import math
from dataclasses import dataclass

from dllmserve.errors import ValidationError, echo
from dllmserve.structured.spec import StructuredOutput

# Upper bounds that hold whatever the model. Above MAX_TEMPERATURE the float64 Gumbel noise
# (-log u)^T underflows for u near 1 (near T = 19) and the argmax sees NaN; above
# MAX_CFG_SCALE the guided logits leave the range whose exp() float64 holds. Both are far above
# any useful setting (the official samplers use 0-1 and 0-3).
MAX_TEMPERATURE = 10.0
MAX_CFG_SCALE = 10.0
MAX_TOP_K = 1_000_000  # more than any vocabulary; the model's own size is checked on admission
MAX_SEED = 2**63 - 1
# Dream's alg_temp divides confidences (|c| <= log(vocabulary) < 13): above 10 the draw of the
# positions to commit is all but uniform.
MAX_ALG_TEMP = 10.0
MAX_POST_STEPS = 16  # LLaDA2.1: steps of a block after its last mask, while they still edit
BLOCK_DIFFUSION_BLOCK = 32  # LLaDA2's block length when a request gives none (its generate's)

SCHEDULES = ("blocks", "dream")  # LLaDA's block schedule, Dream's timestep schedule

LLADA_REMASKING = ("low_confidence", "random")
DREAM_REMASKING = ("maskgit_plus", "topk_margin", "entropy", "origin")
REMASKING_MODES = LLADA_REMASKING + DREAM_REMASKING


@dataclass(frozen=True)
class SamplingParams:
    """How to denoise one request.

    ``block_length=None`` means the sparse config's ``default_block_len`` for a sparse request and
    ``gen_length`` (one block, the official default) for a dense one. With ``threshold`` set, every
    masked token whose confidence exceeds it is committed (at least one per step) and a block ends
    when it has no masks left, so ``steps`` becomes an upper bound.

    ``schedule`` picks how many tokens each step commits: ``"blocks"`` (LLaDA's, an even split
    per block) or ``"dream"`` (Dream's timestep schedule, ``linspace(1, eps, steps + 1)``); None
    means the model's own (resolved per model when the request is admitted). ``alg_temp > 0``
    draws the positions to commit with probability ``softmax(confidence / alg_temp)`` instead
    of taking the most confident (Dream's ``alg_temp``).

    Block-diffusion models (LLaDA2) take the official `generate` arguments one to one:
    ``steps_per_block`` (each block's steps, capped at ``gen_length // minimal_topk``; for the
    other models ``steps`` = ``steps_per_block`` x blocks: give ``steps`` or
    ``steps_per_block``, not both), ``minimal_topk``, ``eos_early_stop`` (end as soon as an EOS
    is committed with every position before it committed) and ``editing_threshold`` (LLaDA2.1:
    committed tokens of the block are replaced where the model's new token differs and its
    probability exceeds it).

    ``structured_output`` (a `StructuredOutput`, or a dict of its fields) makes the answer match a
    JSON schema, a regex or one of a list of choices by construction
    (docs/structured_outputs.md); the canvas must be long enough for its shortest answer.
    """

    temperature: float = 0.0
    gen_length: int = 128
    steps: int = 128
    block_length: int | None = None
    cfg_scale: float = 0.0
    remasking: str = "low_confidence"
    threshold: float | None = None
    seed: int | None = None
    stop_at_eos: bool = True
    logits_eos_inf: bool = False
    confidence_eos_eot_inf: bool = False
    top_p: float | None = None
    top_k: int | None = None
    schedule: str | None = None
    alg_temp: float = 0.0
    eps: float = 1e-3
    structured_output: StructuredOutput | None = None
    steps_per_block: int | None = None
    minimal_topk: int = 1
    eos_early_stop: bool = False
    editing_threshold: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.structured_output, dict):
            try:
                spec = StructuredOutput(**self.structured_output)
            except TypeError as e:
                raise ValidationError(
                    "sampling_params.structured_output",
                    f"takes json_schema, regex or choice: {e}",
                ) from None
            object.__setattr__(self, "structured_output", spec)
        self.validate()

    @property
    def max_steps(self) -> int:
        """The most steps the request can take: `steps`, or with a threshold `gen_length` (every
        step commits at least one token); with `steps_per_block`, that many a block; with
        LLaDA2.1's editing, a mask a step plus up to 16 edit-only steps a block. An upper bound
        (a block-diffusion model's blocks also depend on the prompt: one more block at most)."""
        block = self.block_length or BLOCK_DIFFUSION_BLOCK
        blocks = -(-self.gen_length // block) + 1
        if self.editing_threshold is not None:
            return blocks * (block + MAX_POST_STEPS + 1)
        if self.steps_per_block is not None:  # other models: steps <= gen_length
            return max(self.steps_per_block * blocks, self.gen_length)
        return self.gen_length if self.threshold is not None else self.steps

    def validate(self) -> None:
        """Check each field alone; limits that depend on the model or block come later."""
        f = "sampling_params."
        check_int(f + "gen_length", self.gen_length, 1)
        check_int(f + "steps", self.steps, 1)
        if self.steps > self.gen_length and self.steps_per_block is None:
            raise ValidationError(
                f + "steps",
                f"must be in [1, gen_length={self.gen_length}], got {self.steps}",
            )
        if self.block_length is not None:
            check_int(f + "block_length", self.block_length, 1)
            if self.block_length > self.gen_length:
                raise ValidationError(
                    f + "block_length",
                    f"must be in [1, gen_length={self.gen_length}], got {self.block_length}",
                )
        check_float(f + "temperature", self.temperature, 0.0, MAX_TEMPERATURE)
        check_float(f + "cfg_scale", self.cfg_scale, 0.0, MAX_CFG_SCALE)
        if self.remasking not in REMASKING_MODES:
            raise ValidationError(
                f + "remasking",
                f"must be one of {list(REMASKING_MODES)}, got {echo(self.remasking)}",
            )
        if self.threshold is not None:
            check_float(f + "threshold", self.threshold, 0.0, 1.0)
        if self.top_p is not None:
            check_float(f + "top_p", self.top_p, 0.0, 1.0, open_low=True)
        if self.top_k is not None:
            check_int(f + "top_k", self.top_k, 1, MAX_TOP_K)
        if self.seed is not None:
            check_int(f + "seed", self.seed, 0, MAX_SEED)
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise ValidationError(
                f + "schedule",
                f"must be one of {list(SCHEDULES)} (or unset: the model's own), "
                f"got {echo(self.schedule)}",
            )
        check_float(f + "alg_temp", self.alg_temp, 0.0, MAX_ALG_TEMP)
        if self.alg_temp > 0 and self.threshold is not None:
            raise ValidationError(
                f + "alg_temp",
                f"must be 0 with a threshold (every token above it is committed), "
                f"got {self.alg_temp!r}",
            )
        check_float(f + "eps", self.eps, 0.0, 1.0)
        so = self.structured_output
        if so is not None and not isinstance(so, StructuredOutput):
            raise ValidationError(
                f + "structured_output", f"must be a StructuredOutput or None, got {echo(so)}"
            )
        self._validate_block_fields()
        for name in ("stop_at_eos", "logits_eos_inf", "confidence_eos_eot_inf", "eos_early_stop"):
            if not isinstance(getattr(self, name), bool):
                raise ValidationError(f + name, f"must be a bool, got {echo(getattr(self, name))}")

    def _validate_block_fields(self) -> None:
        f = "sampling_params."
        if self.steps_per_block is not None:
            check_int(f + "steps_per_block", self.steps_per_block, 1, self.gen_length)
            if self.steps != DEFAULT_STEPS:
                raise ValidationError(
                    f + "steps_per_block",
                    f"give steps ({self.steps}) or steps_per_block ({self.steps_per_block}), "
                    "not both",
                )
        check_int(f + "minimal_topk", self.minimal_topk, 1, self.gen_length)
        if self.editing_threshold is not None:
            check_float(f + "editing_threshold", self.editing_threshold, 0.0, 1.0)


DEFAULT_STEPS = SamplingParams.steps


def check_int(field: str, value: object, lo: int, hi: int | None = None) -> None:
    """An integer (not a bool) in [lo, hi] (>= lo without `hi`); the message names the range."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(field, f"must be an integer, got {echo(value)}")
    if value < lo or (hi is not None and value > hi):
        rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValidationError(field, f"must be {rng}, got {value}")


def check_float(field: str, value: object, lo: float, hi: float, open_low: bool = False) -> None:
    """A finite number in [lo, hi] ((lo, hi] with `open_low`); the message names the range."""
    rng = f"{'(' if open_low else '['}{lo:g}, {hi:g}]"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(field, f"must be a number in {rng}, got {echo(value)}")
    if not (math.isfinite(value) and (lo < value if open_low else lo <= value) and value <= hi):
        raise ValidationError(field, f"must be a finite number in {rng}, got {value!r}")
