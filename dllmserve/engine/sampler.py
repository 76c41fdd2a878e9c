"""Batched sampling of one iteration: which token each masked position gets, and which commit.

One call covers every running request as padded [R, B, V] tensors, with per-request settings as
[R] tensors, so there is no per-request loop and no host sync. The token choice and LLaDA's
confidence come from `kernels.sample_tokens` (one fused Triton pass over the vocabulary on the
GPU; its PyTorch reference on the CPU). It reproduces the official LLaDA sampler (docs/models.md,
last section; docs/design.md §9), with these documented generalisations:
- the Gumbel uniforms come from `noise.uniform64(seed, step, position, vocab_id)`, so a
  request's draws do not depend on its batch;
- the mask token's own logit is -inf: a committed position never turns back into a mask;
- ties in confidence go to the lower position (torch.topk leaves ties unspecified);
- `top_k` / `top_p` filter the logits (on logits / temperature, as Dream does) first;
- Dream's confidence modes and `threshold` parallel decoding (Fast-dLLM style).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dllmserve import kernels
from dllmserve.kernels.noise import uniform64
from dllmserve.sampling_params import REMASKING_MODES

MODE_ID = {name: i for i, name in enumerate(REMASKING_MODES)}
LOW_CONFIDENCE, RANDOM, MASKGIT_PLUS, TOPK_MARGIN, ENTROPY, ORIGIN = (
    MODE_ID[m]
    for m in ("low_confidence", "random", "maskgit_plus", "topk_margin", "entropy", "origin")
)


@dataclass
class SamplingBatch:
    """Per-request settings of one iteration (device tensors, R rows) and host-side summaries."""

    temperature: torch.Tensor  # [R] float64
    seed: torch.Tensor  # [R] int64
    step: torch.Tensor  # [R] int64: the request's 0-based global step
    positions: torch.Tensor  # [R, B] int64: canvas offsets of the block positions
    eligible: torch.Tensor  # [R, B] bool: in the block and still masked
    k: torch.Tensor  # [R] int64: tokens to commit (the schedule)
    threshold: torch.Tensor  # [R] float32, NaN where unused
    mode: torch.Tensor  # [R] int64, MODE_ID
    top_k: torch.Tensor  # [R] int64, 0 where unused
    top_p: torch.Tensor  # [R] float32, 1.0 where unused
    logits_eos_inf: torch.Tensor  # [R] bool
    conf_eos_eot_inf: torch.Tensor  # [R] bool
    modes: frozenset[int]  # modes present (host)
    any_noise: bool
    any_threshold: bool
    any_filter: bool


def sample(
    logits: torch.Tensor, b: SamplingBatch, eos_id: int, eot_id: int | None, mask_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (x0 [R, B] int64, commit [R, B] bool) for logits [R, B, V] in the model dtype."""
    R, B, _ = logits.shape
    dev = logits.device
    if b.any_filter:
        temp = b.temperature.to(logits.dtype)[:, None, None]
        logits = _filter_top_k_top_p(_edited(logits, b, mask_id, eos_id), temp, b.top_k, b.top_p)
    # x0 and the low-confidence score: one fused pass over the vocabulary on the GPU
    x0, conf = kernels.sample_tokens(
        logits, b.temperature, b.seed, b.step, b.positions, b.logits_eos_inf,
        b.conf_eos_eot_inf, mask_id, eos_id, eot_id,
    )  # fmt: skip
    if b.modes != {LOW_CONFIDENCE}:
        conf = _other_confidences(logits, x0, conf, b, mask_id, eos_id, eot_id)
    conf = torch.where(b.eligible, conf, -torch.inf)

    n_eligible = b.eligible.sum(dim=-1)
    k = b.k
    if b.any_threshold:
        above = ((conf > b.threshold.to(torch.float64)[:, None]) & b.eligible).sum(dim=-1)
        k = torch.where(b.threshold.isnan(), k, above.clamp(min=1))
    k = torch.minimum(k, n_eligible)
    order = torch.sort(conf, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(B, device=dev).expand(R, B))
    commit = (rank < k[:, None]) & b.eligible
    return x0, commit


def _edited(
    logits: torch.Tensor, b: SamplingBatch, mask_id: int, eos_id: int,
    eot_id: int | None = None,
) -> torch.Tensor:  # fmt: skip
    """A copy with the mask token and the EOS options' -inf entries, as the official sampler
    sets them before the argmax (and, with `eot_id`, before its confidence)."""
    R, B, _ = logits.shape
    out = logits.clone()
    out[..., mask_id] = -torch.inf
    rows = b.logits_eos_inf[:, None].expand(R, B)
    out[..., eos_id] = torch.where(rows, -torch.inf, out[..., eos_id])
    if eot_id is not None:  # confidence_eos_eot_inf, applied after the argmax
        off = b.conf_eos_eot_inf[:, None].expand(R, B)
        out[..., eot_id] = torch.where(off, -torch.inf, out[..., eot_id])
        off0 = (b.conf_eos_eot_inf & (b.temperature == 0))[:, None].expand(R, B)
        out[..., eos_id] = torch.where(off0, -torch.inf, out[..., eos_id])
    return out


def _other_confidences(
    logits: torch.Tensor, x0: torch.Tensor, low_conf: torch.Tensor, b: SamplingBatch,
    mask_id: int, eos_id: int, eot_id: int | None,
) -> torch.Tensor:  # fmt: skip
    """Confidence [R, B] float64 of each request's remasking mode, given the low-confidence
    score (softmax of the un-noised logits at x0) for the requests that use it."""
    conf = low_conf
    mode = b.mode[:, None]
    if b.modes & {RANDOM, ORIGIN}:  # U(0, 1) per position, from the request's own stream
        vocab_sentinel = torch.tensor(logits.shape[-1], device=x0.device)
        u = uniform64(b.seed[:, None], b.step[:, None], b.positions, vocab_sentinel)
        c = u.to(torch.float32).to(torch.float64)
        conf = torch.where((mode == RANDOM) | (mode == ORIGIN), c, conf)
    if b.modes & {MASKGIT_PLUS, TOPK_MARGIN, ENTROPY}:  # Dream: probs of logits / temperature
        edited = _edited(logits, b, mask_id, eos_id, eot_id)
        temp = b.temperature.to(logits.dtype)[:, None, None]
        scaled = _over_temperature(edited, temp)
        p = torch.softmax(scaled.float(), dim=-1)
        if MASKGIT_PLUS in b.modes:
            c = p.gather(-1, x0[..., None])[..., 0].to(torch.float64)
            conf = torch.where(mode == MASKGIT_PLUS, c, conf)
        if TOPK_MARGIN in b.modes:
            top2 = p.topk(2, dim=-1).values
            c = (top2[..., 0] - top2[..., 1]).to(torch.float64)
            conf = torch.where(mode == TOPK_MARGIN, c, conf)
        if ENTROPY in b.modes:
            c = (p * torch.log(p + 1e-10)).sum(dim=-1).to(torch.float64)
            conf = torch.where(mode == ENTROPY, c, conf)
    return conf


def _filter_top_k_top_p(
    logits: torch.Tensor, temp: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
) -> torch.Tensor:
    """-inf outside each row's top_k tokens and top_p nucleus (of softmax(logits / T))."""
    V = logits.shape[-1]
    scaled = _over_temperature(logits, temp)
    sorted_l, idx = torch.sort(scaled, dim=-1, descending=True, stable=True)
    rank = torch.arange(V, device=logits.device)
    k = torch.where(top_k > 0, top_k, V)[:, None, None]
    remove = rank >= k
    cum = torch.softmax(sorted_l.float(), dim=-1).cumsum(dim=-1)
    beyond = cum > top_p[:, None, None]
    beyond = torch.cat([torch.zeros_like(beyond[..., :1]), beyond[..., :-1]], dim=-1)
    remove = remove | beyond
    mask = torch.zeros_like(remove).scatter(-1, idx, remove)
    return logits.masked_fill(mask, -torch.inf)


def _over_temperature(logits: torch.Tensor, temp: torch.Tensor) -> torch.Tensor:
    """logits / T per request, unchanged where T = 0 (greedy requests)."""
    return torch.where(temp > 0, logits / torch.where(temp > 0, temp, 1), logits)
