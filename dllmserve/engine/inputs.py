"""What a request may ask of one engine, checked once: `resolve_request` (docs/design.md §4).

`ModelLimits` holds the facts that bound a request on an engine (the model's length,
vocabulary and layers, the token budget and the cache). `resolve_request` checks a request
against them and resolves its defaults (the schedule, block length, per-layer retention ratios,
lanes, the tokens and cache pages it needs), returning the `ResolvedRequest` the engine builds its
`Request` from. It is pure and torch-free, so the scheduler can call it with limits that travel
in a worker's registration, also before a text prompt is tokenized (its length unknown).
Field-by-field checks of `SamplingParams` / `SparseConfig` happen when those are constructed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from dllmserve.engine.block_inputs import block_layout, refuse_block_fields, refuse_unsupported
from dllmserve.engine.schedule import block_bounds, even_split
from dllmserve.errors import CapacityError, ValidationError
from dllmserve.sampling_params import SamplingParams
from dllmserve.sparse.state import SparseConfig, kept_count


@dataclass(frozen=True)
class ModelLimits:
    """The facts that bound a request on one engine (built once by the engine)."""

    max_len: int  # prompt + gen_length tokens at most (the model's context)
    n_layers: int
    vocab_size: int
    mask_token_id: int
    shifted_logits: bool  # Dream: a REUSE window also holds the position before the block
    default_schedule: str  # the model's own: "dream" for Dream, "blocks" for LLaDA
    max_num_batched_tokens: int  # tokens one iteration forwards at most
    page_size: int  # kept K/V entries per cache page
    num_cache_pages: int  # pages in the engine's pool
    # LLaDA2: blocks aligned to absolute positions, block-causal attention (engine/block_inputs)
    block_diffusion: bool = False
    default_block_length: int | None = None  # a block-diffusion model's own block length


def vocabulary(rows: int, tokenizer) -> int:
    """The ids a prompt may hold: up to the tokenizer's largest id (special tokens included)
    when the engine has one. A checkpoint pads its embedding beyond them (the demo model: 262
    ids, 320 rows), and an id past the tokenizer's is no token at all. (The largest id, not the
    count: a random shape's byte tokenizer has its special tokens at the model's own ids.)"""
    if tokenizer is None:
        return rows
    return min(rows, max(tokenizer.get_vocab().values()) + 1)


@dataclass(frozen=True)
class ResolvedRequest:
    """A checked request with its defaults resolved: everything its `Request` is built from.

    With an unknown prompt length the prompt counts as one token, so `tokens_per_iteration`
    and `pages_per_layer` are lower bounds (a refusal is still certain)."""

    prompt_len: int | None  # None: not known yet (a text prompt at the scheduler)
    params: SamplingParams  # its `schedule` resolved
    sparse: SparseConfig | None  # None: dense, the exact official algorithm
    block_length: int
    blocks: tuple[tuple[int, int], ...]  # [start, end) of each block in the generated canvas
    block_steps: tuple[int, ...]  # denoising steps of each block
    layer_ratios: tuple[float, ...]  # retention ratio per layer (1.0 each when dense)
    lanes: int  # forwards per step: 2 with classifier-free guidance, else 1
    tokens_per_iteration: int  # what the request counts against max_num_batched_tokens
    pages_per_layer: tuple[int, ...]  # cache pages each lane reserves per layer (() if dense)

    @property
    def cache_pages(self) -> int:
        """Pages reserved at admission and held until the request ends."""
        return self.lanes * sum(self.pages_per_layer)


def resolve_request(
    limits: ModelLimits,
    params: SamplingParams,
    sparse: SparseConfig | None = None,
    *,
    prompt_ids: Sequence[int] | None = None,
    prompt_len: int | None = None,
    min_gen_length: int = 0,
) -> ResolvedRequest:
    """Check a request against `limits` and resolve its defaults.

    Give `prompt_ids` (every check) or only `prompt_len`, or neither for a prompt not yet
    tokenized. `min_gen_length` is the shortest canvas the request's structured output fits
    (its compiled automaton's; the engine knows it). Raises ValidationError naming the field and
    its valid range, or CapacityError for a request this engine can never hold however long it
    waits.
    """
    if not isinstance(params, SamplingParams):
        raise ValidationError("sampling_params", f"must be SamplingParams, got {params!r}")
    if sparse is not None and not isinstance(sparse, SparseConfig):
        raise ValidationError("sparse_config", f"must be SparseConfig, got {sparse!r}")
    if params.schedule is None:
        params = replace(params, schedule=limits.default_schedule)
    if prompt_ids is not None:
        _check_prompt_ids(limits, prompt_ids)
        prompt_len = len(prompt_ids)
    if params.top_k is not None and params.top_k > limits.vocab_size:
        raise ValidationError(
            "sampling_params.top_k",
            f"must be in [1, {limits.vocab_size}] (the vocabulary), got {params.top_k}",
        )
    if limits.block_diffusion:
        _check_min_gen(params.gen_length, min_gen_length)  # the answer: gen_length positions
        return _resolve_block_diffusion(limits, params, sparse, prompt_len)
    refuse_block_fields(params)
    known_len = prompt_len
    prompt_len = 1 if prompt_len is None else prompt_len
    gen = params.gen_length
    _check_min_gen(gen, min_gen_length)
    seq_len = _checked_length(limits, prompt_len, gen, known=known_len is not None)
    active = sparse if sparse is not None and sparse.enabled else None
    block = params.block_length
    if block is None:
        block = min(active.default_block_len, gen) if active else gen
    blocks = tuple(block_bounds(gen, block))
    if params.steps_per_block is not None:  # the same steps in every block
        steps = min(gen, params.steps_per_block * len(blocks))
        params = replace(params, steps=steps, steps_per_block=None)
    if params.steps < len(blocks):
        raise ValidationError(
            "sampling_params.steps",
            f"must be in [{len(blocks)}, {gen}] (at least one step per block: "
            f"ceil(gen_length / block_length) = {len(blocks)}), got {params.steps}",
        )
    ratios: tuple[float, ...] = (1.0,) * limits.n_layers
    pages: tuple[int, ...] = ()
    if active is not None:
        ratios, pages = _sparse_pages(limits, active, block, blocks, seq_len)
    lanes = 2 if params.cfg_scale > 0 else 1
    resolved = ResolvedRequest(
        prompt_len=known_len,
        params=params,
        sparse=active,
        block_length=block,
        blocks=blocks,
        block_steps=tuple(even_split(params.steps, len(blocks))),
        layer_ratios=ratios,
        lanes=lanes,
        tokens_per_iteration=seq_len * lanes,
        pages_per_layer=pages,
    )
    check_capacity(limits, resolved)
    return resolved


def _resolve_block_diffusion(
    limits: ModelLimits, params: SamplingParams, sparse: SparseConfig | None, prompt_len: int | None
) -> ResolvedRequest:
    """A block-diffusion model's request (LLaDA2): blocks at absolute positions."""
    refuse_unsupported(params, sparse)
    layout = block_layout(
        params,
        prompt_len,
        max_len=limits.max_len,
        page_size=limits.page_size,
        block_length=limits.default_block_length,
        n_layers=limits.n_layers,
    )
    resolved = ResolvedRequest(**layout)
    check_capacity(limits, resolved)
    return resolved


def _check_min_gen(gen: int, min_gen_length: int) -> None:
    if gen < min_gen_length:
        raise ValidationError(
            "sampling_params.gen_length",
            f"must be at least {min_gen_length} for this structured_output (its shortest answer "
            f"is {min_gen_length} tokens), got {gen}",
        )


def _checked_length(limits: ModelLimits, prompt_len: int, gen: int, known: bool) -> int:
    """The sequence's length (prompt + canvas), refused past the model's maximum."""
    seq_len = prompt_len + gen
    if seq_len > limits.max_len:
        prompt = f"prompt ({prompt_len} tokens)" if known else "a 1-token prompt"
        raise ValidationError(
            "sampling_params.gen_length",
            f"{prompt} + gen_length ({gen}) = {seq_len} exceeds the model's maximum length "
            f"{limits.max_len}",
        )
    return seq_len


def _sparse_pages(
    limits: ModelLimits,
    active: SparseConfig,
    block: int,
    blocks: tuple[tuple[int, int], ...],
    seq_len: int,
) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """A sparse request's per-layer ratios and the pages each layer's heads ever keep, after
    the checks that need the model or the block length."""
    if active.default_block_len > limits.max_len:
        raise ValidationError(
            "sparse_config.default_block_len",
            f"must be in [1, {limits.max_len}] (the model's maximum length), "
            f"got {active.default_block_len}",
        )
    if active.delay_step >= block:
        raise ValidationError(
            "sparse_config.delay_step",
            f"must be in [0, {block - 1}] (below the block length {block}), "
            f"got {active.delay_step}",
        )
    ratios = tuple(active.ratios_for(limits.n_layers))
    # the most candidates a head ever keeps: at the shortest REUSE window (the last block)
    window = min(e - s for s, e in blocks) + int(limits.shifted_logits)
    pages = tuple(-(-kept_count(seq_len - window, r) // limits.page_size) for r in ratios)
    return ratios, pages


def check_capacity(limits: ModelLimits, resolved: ResolvedRequest) -> None:
    """CapacityError for a request this engine can never hold, however long it waits."""
    if resolved.tokens_per_iteration > limits.max_num_batched_tokens:
        raise CapacityError(
            f"the request needs {resolved.tokens_per_iteration} tokens per iteration; "
            f"max_num_batched_tokens is {limits.max_num_batched_tokens}"
        )
    if resolved.cache_pages > limits.num_cache_pages:
        raise CapacityError(
            f"the request needs {resolved.cache_pages} cache pages; the pool holds "
            f"{limits.num_cache_pages}"
        )


def _check_prompt_ids(limits: ModelLimits, ids: Sequence[int]) -> None:
    if not ids:
        raise ValidationError("prompt", "must hold at least one token")
    bad = [t for t in ids if not isinstance(t, int) or not 0 <= t < limits.vocab_size]
    if bad:
        raise ValidationError(
            "prompt", f"token id {bad[0]!r} is outside [0, {limits.vocab_size - 1}]"
        )
    if limits.mask_token_id in ids:
        raise ValidationError("prompt", f"holds the mask token id {limits.mask_token_id}")
