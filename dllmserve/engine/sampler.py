"""Batched sampling of one iteration: which token each masked position gets, and which commit.

One call covers every running request as padded [R, B, V] tensors, with per-request settings as
[R] tensors, so there is no per-request loop and no host sync. The token choice and LLaDA's
confidence come from `kernels.sample_tokens` (one fused Triton pass over the vocabulary on the
GPU; its PyTorch reference on the CPU). It reproduces the official LLaDA sampler and Dream's
`diffusion_generate` (docs/models.md; docs/design.md §9), with these documented
generalisations:
- every random draw comes from `noise.uniform64(seed, step, position, vocab_id)` (the Gumbel
  noise of a token, a position's uniform, a Gumbel key for `alg_temp`), so a request's draws do
  not depend on its batch;
- a position's token is never the mask token: LLaDA's modes give it logit -inf; Dream's keep it
  in the filters and in the confidence softmax (as Dream does) but pick the best other token;
- ties in confidence go to the lower position (torch.topk leaves ties unspecified);
- `top_p` then `top_k` filter the logits (on logits / temperature, as Dream does) first;
- `threshold` parallel decoding (Fast-dLLM style).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch

from dllmserve import kernels
from dllmserve.engine.temperature import over_temperature
from dllmserve.kernels.noise import uniform64
from dllmserve.sampling_params import LLADA_REMASKING, REMASKING_MODES

if TYPE_CHECKING:
    from dllmserve.engine.constrained import ConstrainedRows

MODE_ID = {name: i for i, name in enumerate(REMASKING_MODES)}
LOW_CONFIDENCE, RANDOM, MASKGIT_PLUS, TOPK_MARGIN, ENTROPY, ORIGIN = (
    MODE_ID[m]
    for m in ("low_confidence", "random", "maskgit_plus", "topk_margin", "entropy", "origin")
)
FIRST_DREAM_MODE = len(LLADA_REMASKING)  # Dream's modes have the ids from here on


@dataclass
class SamplingBatch:
    """Per-request settings of one iteration (device tensors, R rows) and host-side summaries."""

    temperature: torch.Tensor  # [R] float64
    seed: torch.Tensor  # [R] int64
    step: torch.Tensor  # [R] int64: the request's 0-based global step
    positions: torch.Tensor  # [R, B] int64: canvas offsets of the block positions
    eligible: torch.Tensor  # [R, B] bool: in the block and still masked
    k: torch.Tensor  # [R] int64: tokens to commit (the schedule)
    transfer_prob: torch.Tensor  # [R] float64: Dream's origin, each mask's chance; NaN: use k
    alg_temp: torch.Tensor  # [R] float64: > 0 draws the positions to commit; 0: the top k
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
    any_alg_temp: bool
    any_transfer: bool
    constraint: ConstrainedRows | None = None  # structured outputs' rows (engine/constrained.py)


class Sampled(NamedTuple):
    x0: torch.Tensor  # [R, B] int64: the token each position gets if committed
    commit: torch.Tensor  # [R, B] bool: the positions this step commits
    # [R, B] float64: the model's probability of x0 (LLaDA's low-confidence score, whatever
    # the request's remasking mode ranks by): the confidence of a provisional token
    confidence: torch.Tensor


def sample(
    logits: torch.Tensor, b: SamplingBatch, eos_id: int, eot_id: int | None, mask_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (x0 [R, B] int64, commit [R, B] bool) for logits [R, B, V] in the model dtype."""
    return sample_scored(logits, b, eos_id, eot_id, mask_id)[:2]


def sample_scored(
    logits: torch.Tensor, b: SamplingBatch, eos_id: int, eot_id: int | None, mask_id: int
) -> Sampled:
    """`sample`, with each token's probability too (computed anyway: no extra work)."""
    R, B, _ = logits.shape
    dev = logits.device
    if b.any_filter:
        temp = b.temperature.to(logits.dtype)[:, None, None]
        edited = _edited(logits, b, mask_id, eos_id)
        logits = _filter_top_p_top_k(edited, temp, b.top_k, b.top_p, mask_id)
    # x0 and the low-confidence score: one fused pass over the vocabulary on the GPU
    x0, conf = kernels.sample_tokens(
        logits,
        b.temperature,
        b.seed,
        b.step,
        b.positions,
        b.logits_eos_inf,
        b.conf_eos_eot_inf,
        mask_id,
        eos_id,
        eot_id,
    )
    probability = conf
    if b.modes != {LOW_CONFIDENCE}:
        conf = _other_confidences(logits, x0, conf, b, mask_id, eos_id, eot_id)
    if b.constraint is not None:  # their tokens from the DP's assignment, and its confidences
        special = (mask_id, eos_id, eot_id)
        x0, conf, probability = b.constraint.choose(
            logits, x0, conf, probability, b.seed, b.step, b.positions, special
        )
    conf = torch.where(b.eligible, conf, -torch.inf)

    n_eligible = b.eligible.sum(dim=-1)
    k = b.k
    if b.any_threshold:
        above = ((conf > b.threshold.to(torch.float64)[:, None]) & b.eligible).sum(dim=-1)
        k = torch.where(b.threshold.isnan(), k, above.clamp(min=1))
    k = torch.minimum(k, n_eligible)
    key = _drawn_keys(conf, b, logits.shape[-1]) if b.any_alg_temp else conf
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(B, device=dev).expand(R, B))
    commit = (rank < k[:, None]) & b.eligible
    if b.any_transfer:  # Dream's origin: a mask is committed where its uniform is below p
        p = b.transfer_prob[:, None]
        commit = torch.where(p.isnan(), commit, b.eligible & (conf < p))
    if b.constraint is not None:
        b.constraint.observe(x0, commit)
    return Sampled(x0, commit, probability)


def _position_uniform(b: SamplingBatch, coordinate: int) -> torch.Tensor:
    """U(0, 1) float64 [R, B] per position from the request's own stream, at a vocabulary
    coordinate past the real ids (V for a position's uniform, V + 1 for alg_temp's keys)."""
    return uniform64(b.seed[:, None], b.step[:, None], b.positions, coordinate)


def _drawn_keys(conf: torch.Tensor, b: SamplingBatch, n_vocab: int) -> torch.Tensor:
    """Dream's alg_temp: Gumbel keys `conf / alg_temp + G`, whose k largest are k positions
    drawn without replacement with probability softmax(conf / alg_temp) (conf elsewhere)."""
    t = b.alg_temp[:, None]
    gumbel = -torch.log(-torch.log(_position_uniform(b, n_vocab + 1)))
    scaled = (conf / torch.where(t > 0, t, 1.0)).clamp(-1e300, 1e300)  # finite where eligible
    return torch.where(b.eligible & (t > 0), scaled + gumbel, conf)


def _edited(
    logits: torch.Tensor,
    b: SamplingBatch,
    mask_id: int,
    eos_id: int,
    eot_id: int | None = None,
) -> torch.Tensor:
    """A copy with the EOS options' -inf entries, as the official sampler sets them before the
    argmax (and, with `eot_id`, before its confidence), and the mask token's in LLaDA's modes
    (Dream's keep it: its share counts in their filters and confidences)."""
    R, B, _ = logits.shape
    out = logits.clone()
    llada = (b.mode < FIRST_DREAM_MODE)[:, None].expand(R, B)
    out[..., mask_id] = torch.where(llada, -torch.inf, out[..., mask_id])
    rows = b.logits_eos_inf[:, None].expand(R, B)
    out[..., eos_id] = torch.where(rows, -torch.inf, out[..., eos_id])
    if eot_id is not None:  # confidence_eos_eot_inf, applied after the argmax
        off = b.conf_eos_eot_inf[:, None].expand(R, B)
        out[..., eot_id] = torch.where(off, -torch.inf, out[..., eot_id])
        off0 = (b.conf_eos_eot_inf & (b.temperature == 0))[:, None].expand(R, B)
        out[..., eos_id] = torch.where(off0, -torch.inf, out[..., eos_id])
    return out


def _other_confidences(
    logits: torch.Tensor,
    x0: torch.Tensor,
    low_conf: torch.Tensor,
    b: SamplingBatch,
    mask_id: int,
    eos_id: int,
    eot_id: int | None,
) -> torch.Tensor:
    """Confidence [R, B] float64 of each request's remasking mode, given the low-confidence
    score (softmax of the un-noised logits at x0) for the requests that use it."""
    conf = low_conf
    mode = b.mode[:, None]
    if b.modes & {RANDOM, ORIGIN}:  # U(0, 1) per position, float32 like torch.rand
        c = _position_uniform(b, logits.shape[-1]).to(torch.float32).to(torch.float64)
        conf = torch.where((mode == RANDOM) | (mode == ORIGIN), c, conf)
    if b.modes & {MASKGIT_PLUS, TOPK_MARGIN, ENTROPY}:  # Dream: probs of logits / temperature
        edited = _edited(logits, b, mask_id, eos_id, eot_id)
        temp = b.temperature.to(logits.dtype)[:, None, None]
        scaled = over_temperature(edited, temp)
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


def _filter_top_p_top_k(
    logits: torch.Tensor,
    temp: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    mask_id: int,
) -> torch.Tensor:
    """-inf outside each row's filters on logits / T, Dream's: the top_p nucleus (where top_p
    < 1; the token that crosses top_p stays), then every token below the top_k-th largest (ties
    stay). The most likely token other than the mask always stays, so a token can be picked."""
    R, B, V = logits.shape
    scaled = over_temperature(logits, temp)
    sorted_l, idx = torch.sort(scaled, dim=-1, descending=True, stable=True)
    cum = torch.softmax(sorted_l.float(), dim=-1).cumsum(dim=-1)
    beyond = cum > top_p[:, None, None]
    beyond = torch.cat([torch.zeros_like(beyond[..., :1]), beyond[..., :-1]], dim=-1)
    beyond &= (top_p < 1)[:, None, None]
    # the nucleus is a prefix of the sorted order, so the top_k-th of what it keeps is the
    # top_k-th overall whenever it keeps that many (and removes nothing more otherwise)
    k = torch.where(top_k > 0, top_k, V).clamp(max=V)
    kth = sorted_l.gather(-1, (k - 1)[:, None, None].expand(R, B, 1))
    remove = beyond | (sorted_l < kth)
    best_other = (idx[..., :1] == mask_id).long()  # sorted rank of the best non-mask token
    remove.scatter_(-1, best_other, False)
    mask = torch.zeros_like(remove).scatter(-1, idx, remove)
    return logits.masked_fill(mask, -torch.inf)
