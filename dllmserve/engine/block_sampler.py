"""The token choice and commits of a block-diffusion step: LLaDA2's `generate` (docs/models.md,
"LLaDA2"), batched over requests like `sampler.sample_scored`.

- x0: the argmax of the probabilities at temperature 0, the mask token included as in the
  official code (a mask committed stays a mask; LLaDA2.1 may edit a token back to the mask),
  else a draw from softmax(filtered logits / T) by the engine's counter-based Gumbel-max, never
  the mask token (top_k / top_p apply with T > 0 only, as in the official code);
- confidence: the probability of x0 in that softmax over the whole vocabulary, the mask token
  included (the official `x0_p`);
- commits: at the block's masks, every one above `threshold` when at least the step's scheduled
  count are, else the most confident min(scheduled, masks) (ties to the lower position);
- LLaDA2.1's edits: a committed non-prompt position of the block whose x0 differs from its token
  and whose confidence exceeds `editing_threshold`;
- structured outputs (`engine/constrained.py`): a constrained request's x0 over its answer
  window (the block's positions in [P, P + gen_length)) is the DP's most probable completable
  assignment, scored by the log-probabilities of the same filtered logits with the mask banned
  plus the same Gumbel noise (the DP's argmax is the free draw wherever the constraint allows
  it), and its confidence that token's probability in the same softmax; the commits then rank
  as above. The prompt's tail and the last block's positions past the answer stay free.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dllmserve import kernels
from dllmserve.engine.sampler import Sampled, SamplingBatch, _filter_top_p_top_k


@dataclass
class BlockSampling:
    """The block-diffusion settings of one iteration (device tensors, R rows)."""

    k: torch.Tensor  # [R] int64: the step's scheduled commits (the threshold's floor)
    edit_threshold: torch.Tensor  # [R] float32, NaN: no edits
    editable: torch.Tensor  # [R, B] bool: committed, not prompt, in the block
    current: torch.Tensor  # [R, B] int64: the block's tokens before the step


def sample_block(
    logits: torch.Tensor, b: SamplingBatch, e: BlockSampling, mask_id: int, eos_id: int
) -> Sampled:
    """(x0, commit | edits, confidence) of logits [R, B, V]."""
    R, B, _ = logits.shape
    if b.any_filter:
        temp = b.temperature.to(logits.dtype)[:, None, None]
        filtered = _filter_top_p_top_k(logits, temp, b.top_k, b.top_p, mask_id)
        logits = torch.where(temp > 0, filtered, logits)
    drawn = None
    if b.any_noise:
        drawn, _ = kernels.sample_tokens(
            logits,
            b.temperature,
            b.seed,
            b.step,
            b.positions,
            b.logits_eos_inf,
            b.conf_eos_eot_inf,
            mask_id,
            eos_id,
            None,
        )
    # x0 (the argmax, or the draw where T > 0) and its probability in softmax(logits / T), in
    # one fused kernel on CUDA: the fp32 probabilities of the whole slab are never formed
    x0, conf = kernels.block_probabilities(logits, b.temperature, drawn)
    if b.constraint is not None:  # structured outputs: their answer windows from the DP
        special = (mask_id, eos_id, None)
        x0, conf, _ = b.constraint.choose(
            logits, x0, conf, conf, b.seed, b.step, b.positions, special
        )
    c = torch.where(b.eligible, conf, -torch.inf)
    above = (c > b.threshold.to(torch.float64)[:, None]).sum(dim=-1)  # NaN: none
    k = torch.minimum(torch.maximum(above, e.k), b.eligible.sum(dim=-1))
    order = torch.sort(c, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(B, device=logits.device).expand(R, B))
    commit = (rank < k[:, None]) & b.eligible
    if b.constraint is not None:  # no edits there: editing_threshold is refused with it
        b.constraint.observe(x0, commit)
    edit_thr = e.edit_threshold.to(torch.float64)[:, None]
    edits = e.editable & (conf > edit_thr) & (x0 != e.current)
    return Sampled(x0, commit | edits, conf)
