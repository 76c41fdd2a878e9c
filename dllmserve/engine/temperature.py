"""Per-request temperature on logits, shared by the samplers and the structured outputs' DP (which
must score a block-diffusion row's tokens in the very softmax its sampler uses)."""

from __future__ import annotations

import torch


def over_temperature(logits: torch.Tensor, temp: torch.Tensor) -> torch.Tensor:
    """logits / T per request, unchanged where T = 0 (greedy requests)."""
    return torch.where(temp > 0, logits / torch.where(temp > 0, temp, 1), logits)
