"""Fused token choice and confidence for a [requests, block, vocab] logits slab.

The engine's sampler (dllmserve/engine/sampler.py) materialises float64 noise, noisy logits
and a softmax over the whole vocabulary for every position. This kernel streams each row's
logits once, keeping per-lane running maxima and softmax sums (one cross-lane reduction per
row, at the end):
- the counter-based uniforms of `noise.uniform64` (splitmix64 in uint64) are drawn
  in registers;
- Gumbel-max is decided in float64 exactly as the reference computes it, but only for the
  vocabulary chunks that can hold the winner: an fp32 estimate of log(noisy) =
  l - T*log(-log U), accurate to ~1e-6 (x T), skips every chunk whose best estimate is more than
  a safe margin below the best seen so far (a skipped token is provably smaller in float64,
  as long as exp(logit) is finite, i.e. logits < 709);
- on CUDA the float64 exp/log/pow are libdevice's, the functions torch's CUDA kernels call,
  so tokens are bit-identical to the reference; the confidence differs from torch's softmax
  only in the order of the fp32 sum, before it is rounded to the logits' dtype as the
  reference does.
Reference: ``reference.sample_tokens``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from ._common import position_logits


@triton.jit
def _hash(h, vocab):
    """noise.uniform64's 53 random bits, given h = seed*K1 + step*K2 + position*K3 (mod 2^64)."""
    x = h + vocab.to(tl.uint64) * 0x8CB92BA72F3D8DD7
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB
    x = x ^ (x >> 31)
    return x >> 11


@triton.jit
def _neg_log_u_f32(bits, LIBDEVICE: tl.constexpr):
    """-log(U) in fp32, within a few ulps of the reference's float64 value, for the reference's
    float64 U = (bits + 0.5) * 2^-53: from U itself below 1/2, and above from 1 - U (exact in
    float64 there) through log1p, since fp32 U would round away a small -log U. On CUDA the
    logs are libdevice's (Triton's own fp32 log may be the approximate PTX one)."""
    u = (bits.to(tl.float64) + 0.5) * 1.1102230246251565e-16
    w = (1.0 - u).to(tl.float32)
    if LIBDEVICE:
        hi = -libdevice.log1p(-w)
        lo = -libdevice.log(u.to(tl.float32))
    else:  # Goldberg's log1p from an accurate log (numpy's in the interpreter)
        y = tl.maximum(1.0 - w, 0.25)
        hi = tl.where(y == 1.0, w, -tl.log(y) * w / tl.where(y == 1.0, 1.0, 1.0 - y))
        lo = -tl.log(u.to(tl.float32))
    return tl.where(u < 0.5, lo, hi)


@triton.jit
def _sample(
    L,
    TEMP,
    SEED,
    STEP,
    POS,
    EOS_INF,
    CONF_INF,
    X0,
    CONF,
    n_vocab,
    block,
    stride_lr,
    stride_lb,
    mask_id,
    eos_id,
    eot_id,
    BLOCK_V: tl.constexpr,
    LIBDEVICE: tl.constexpr,
):
    row, r, base = position_logits(L, block, stride_lr, stride_lb)
    t = tl.load(TEMP + r)
    t32 = t.to(tl.float32)
    seed = tl.load(SEED + r).to(tl.uint64, bitcast=True)
    step = tl.load(STEP + r).to(tl.uint64, bitcast=True)
    pos = tl.load(POS + row).to(tl.uint64, bitcast=True)
    h = seed * 0x9E3779B97F4A7C15 + step * 0xD1B54A32D192ED03 + pos * 0xABC98388FB8FAC03
    eos_off = tl.load(EOS_INF + r) != 0
    conf_off = tl.load(CONF_INF + r) != 0
    conf_eos_off = conf_off & (t == 0)

    lanes = tl.arange(0, BLOCK_V)
    best = tl.full([BLOCK_V], float("-inf"), tl.float64)  # per lane: first maximum wins
    best_i = tl.zeros([BLOCK_V], tl.int32)
    m = tl.full([BLOCK_V], float("-inf"), tl.float32)  # per-lane online softmax
    s = tl.zeros([BLOCK_V], tl.float32)
    seen = tl.full([], float("-inf"), tl.float32)  # best fp32 estimate of log(noisy) so far
    for v0 in range(0, n_vocab, BLOCK_V):
        v = v0 + lanes
        raw = tl.load(base + v, mask=v < n_vocab, other=float("-inf")).to(tl.float32)
        lg = tl.where((v == mask_id) | ((v == eos_id) & eos_off), float("-inf"), raw)
        if t > 0:
            bits = _hash(h, v)
            g = _neg_log_u_f32(bits, LIBDEVICE)
            est = lg - t32 * (libdevice.log(g) if LIBDEVICE else tl.log(g))
            c_est = tl.max(est, 0)
            if c_est >= seen - (1e-3 + 1e-4 * tl.abs(seen) + 1e-5 * t32):
                u = (bits.to(tl.float64) + 0.5) * 1.1102230246251565e-16
                l64 = lg.to(tl.float64)
                if LIBDEVICE:
                    score = libdevice.exp(l64) / libdevice.pow(-libdevice.log(u), t)
                else:  # the interpreter has no libdevice: numpy's libm, pow through exp/log
                    score = tl.exp(l64) / tl.exp(t * tl.log(-tl.log(u)))
                score = tl.where(v < n_vocab, score, float("-inf"))
                take = score > best
                best = tl.where(take, score, best)
                best_i = tl.where(take, v, best_i)
            seen = tl.maximum(seen, c_est)
        else:
            take = lg.to(tl.float64) > best
            best = tl.where(take, lg.to(tl.float64), best)
            best_i = tl.where(take, v, best_i)
        lc = tl.where(
            ((v == eot_id) & conf_off) | ((v == eos_id) & conf_eos_off), float("-inf"), lg
        )
        m_new = tl.maximum(m, lc)
        live = m_new != float("-inf")
        shift = tl.where(live, m_new, 0.0)  # no inf - inf on lanes that saw only -inf
        s = tl.where(live, s * tl.exp(m - shift) + tl.exp(lc - shift), 0.0)
        m = m_new
    top = tl.max(best, 0)
    x0 = tl.min(tl.where(best == top, best_i, n_vocab), 0)
    m_all = tl.max(m, 0)
    total = tl.sum(tl.where(m != float("-inf"), s * tl.exp(m - m_all), 0.0), 0)
    lx = tl.load(base + x0).to(tl.float32)
    off = (x0 == mask_id) | ((x0 == eos_id) & (eos_off | conf_eos_off))
    off = off | ((x0 == eot_id) & conf_off)
    lx = tl.where(off, float("-inf"), lx)
    p = tl.exp(lx - m_all) / total
    tl.store(X0 + row, x0.to(tl.int64))
    tl.store(CONF + row, p.to(L.dtype.element_ty).to(tl.float64))


def sample_tokens(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    seed: torch.Tensor,
    step: torch.Tensor,
    positions: torch.Tensor,
    logits_eos_inf: torch.Tensor,
    conf_eos_eot_inf: torch.Tensor,
    mask_id: int,
    eos_id: int,
    eot_id: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of ``reference.sample_tokens``: (x0 [R,B] int64, confidence [R,B] f64)."""
    n_req, block, n_vocab = logits.shape
    for t in (temperature, seed, step, logits_eos_inf, conf_eos_eot_inf):
        assert t.shape == (n_req,)
    assert positions.shape == (n_req, block)
    assert seed.dtype == step.dtype == positions.dtype == torch.int64
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    if eot_id is None:  # the reference masks EOS/EoT off the confidence only with an EoT id
        conf_eos_eot_inf = torch.zeros_like(conf_eos_eot_inf)
    x0 = torch.empty((n_req, block), dtype=torch.int64, device=logits.device)
    conf = torch.empty((n_req, block), dtype=torch.float64, device=logits.device)
    if n_req * block == 0:
        return x0, conf
    _sample[(n_req * block,)](
        logits,
        temperature.to(torch.float64),
        seed,
        step,
        positions.contiguous(),
        logits_eos_inf.to(torch.int8),
        conf_eos_eot_inf.to(torch.int8),
        x0,
        conf,
        n_vocab,
        block,
        logits.stride(0),
        logits.stride(1),
        mask_id,
        eos_id,
        -1 if eot_id is None else eot_id,
        BLOCK_V=2048,
        LIBDEVICE=logits.is_cuda,
        num_warps=8,
    )
    return x0, conf
