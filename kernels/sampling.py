"""Fused token choice and confidence for a [requests, block, vocab] logits slab.

The engine's sampler (dllmserve/engine/sampler.py) materialises float64 noise, noisy logits
and a softmax over the whole vocabulary for every position. This kernel streams each row's
logits once: it draws the counter-based uniforms of dllmserve/engine/noise.py (splitmix64 in
uint64) in registers, keeps the running float64 Gumbel-max (or plain argmax at temperature 0)
and an online softmax for the low-confidence score. On CUDA the float64 exp/log/pow are
libdevice's, the functions torch's CUDA kernels use, so the noisy values and tokens are
bit-identical to the reference; the confidence differs from torch's softmax only in the
order of the fp32 sum, before it is rounded to the logits' dtype as the reference does.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice


@triton.jit
def _uniform(h, vocab):
    """noise.uniform64 given h = seed*K1 + step*K2 + position*K3 (its constants, mod 2^64)."""
    x = h + vocab.to(tl.uint64) * 0x8CB92BA72F3D8DD7
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB
    x = x ^ (x >> 31)
    return ((x >> 11).to(tl.float64) + 0.5) * 1.1102230246251565e-16


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
    row = tl.program_id(0)
    r = row // block
    base = L + r.to(tl.int64) * stride_lr + (row % block).to(tl.int64) * stride_lb
    t = tl.load(TEMP + r)
    seed = tl.load(SEED + r).to(tl.uint64, bitcast=True)
    step = tl.load(STEP + r).to(tl.uint64, bitcast=True)
    pos = tl.load(POS + row).to(tl.uint64, bitcast=True)
    h = seed * 0x9E3779B97F4A7C15 + step * 0xD1B54A32D192ED03 + pos * 0xABC98388FB8FAC03
    eos_off = tl.load(EOS_INF + r) != 0
    conf_off = tl.load(CONF_INF + r) != 0
    conf_eos_off = conf_off & (t == 0)

    best = tl.full([], float("-inf"), tl.float64)
    best_i = tl.zeros([], tl.int32)
    m = tl.full([], float("-inf"), tl.float32)
    s = tl.zeros([], tl.float32)
    for v0 in range(0, n_vocab, BLOCK_V):
        v = v0 + tl.arange(0, BLOCK_V)
        ok = v < n_vocab
        raw = tl.load(base + v, mask=ok, other=float("-inf"))
        lg = tl.where((v == mask_id) | ((v == eos_id) & eos_off), float("-inf"), raw)
        l64 = lg.to(tl.float64)
        if t > 0:
            u = _uniform(h, v)
            if LIBDEVICE:
                score = libdevice.exp(l64) / libdevice.pow(-libdevice.log(u), t)
            else:  # the interpreter has no libdevice: numpy's libm, pow through exp/log
                score = tl.exp(l64) / tl.exp(t * tl.log(-tl.log(u)))
        else:
            score = l64
        score = tl.where(ok, score, float("-inf"))
        c_best = tl.max(score, 0)
        if c_best > best:
            best = c_best
            best_i = v0 + tl.argmax(score, 0)
        lc = lg.to(tl.float32)
        lc = tl.where(
            ((v == eot_id) & conf_off) | ((v == eos_id) & conf_eos_off), float("-inf"), lc
        )
        m_new = tl.maximum(m, tl.max(lc, 0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(lc - m_new), 0)
        m = m_new
    lx = tl.load(base + best_i).to(tl.float32)
    off = (best_i == mask_id) | ((best_i == eos_id) & (eos_off | conf_eos_off))
    off = off | ((best_i == eot_id) & conf_off)
    lx = tl.where(off, float("-inf"), lx)
    p = tl.exp(lx - m) / s
    tl.store(X0 + row, best_i.to(tl.int64))
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
        BLOCK_V=1024,
        LIBDEVICE=logits.is_cuda,
        num_warps=8,
    )
    return x0, conf
