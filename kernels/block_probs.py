"""The block-diffusion sampler's x0 and confidence (engine/block_sampler.py) in one kernel.

The PyTorch path materialises fp32 copies and probabilities of the whole [R, B, V] slab, a
few times over (~7 GB a step at batch 64 over a 157k vocabulary); here one program per (row,
position) reads its logits twice: pass 1 for the max m of v, pass 2 for s = sum exp(v - m) in
fp32 and the first index of the largest exp(v - m). v is the logit, or, where T > 0 and a
token was drawn, logit / T divided in fp32 and rounded to the logits' dtype, as torch divides
a 16-bit tensor by a 16-bit T. x0 = the drawn token where T > 0, else that argmax; its
confidence is exp(v[x0] - m) / s. On CUDA exp is libdevice's (the expf torch's softmax
calls) and the divisions are round-to-nearest, so the argmax is torch's: the probabilities
tie exactly where their exps do, except where the division by s itself merges two adjacent
exps (logits within ~1e-7 of each other; torch's sum order decides those, which no other
order reproduces). The confidence differs from torch's only in the order of the fp32 sum.
`token_probabilities` runs the same program for given tokens of given rows (a structured
output's DP picks: x0 is the token at any T), so their confidences come from the same sum.
Reference: ``reference.block_probabilities``, ``reference.token_probabilities``.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from ._common import position_logits, require

BLOCK_V = 4096


@triton.jit
def _round_bf16(x):
    """fp32 x rounded to bf16, to nearest even, kept in fp32: by its bits, since the
    interpreter's own cast truncates (NaN kept as it is)."""
    b = x.to(tl.uint32, bitcast=True)
    b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
    return tl.where(x != x, x, b.to(tl.float32, bitcast=True))


@triton.jit
def _values(L, base, v, n_vocab, t, scaled, BF16: tl.constexpr, LIBDEVICE: tl.constexpr):
    """The softmax's inputs at ids v in fp32 (-inf past the vocabulary): the logits, or
    logit / T rounded to the logits' dtype for a drawn row at T > 0."""
    x = tl.load(base + v, mask=v < n_vocab, other=float("-inf")).to(tl.float32)
    if scaled:
        q = libdevice.div_rn(x, t) if LIBDEVICE else x / t
        if BF16:
            x = _round_bf16(q)
        else:
            x = q.to(L.dtype.element_ty).to(tl.float32)
    return x


@triton.jit
def _exp(x, LIBDEVICE: tl.constexpr):
    """expf as torch's CUDA softmax computes it (Triton's own exp is the approximate ex2)."""
    return libdevice.exp(x) if LIBDEVICE else tl.exp(x)


@triton.jit
def _block_probs(
    L,
    TEMP,
    DRAWN,
    X0,
    CONF,
    ROWS,
    n_vocab,
    block,
    stride_lr,
    stride_lb,
    BLOCK_V: tl.constexpr,
    BF16: tl.constexpr,
    LIBDEVICE: tl.constexpr,
    FORCED: tl.constexpr,
):
    row, r, base = position_logits(L, block, stride_lr, stride_lb)
    if FORCED:  # position (r, b) reads logits row ROWS[r]; x0 is always the given token
        src = tl.load(ROWS + r).to(tl.int64)
        base = L + src * stride_lr + (row % block).to(tl.int64) * stride_lb
    t = tl.load(TEMP + r)
    scaled = t > 0  # a drawn row: v is logit / T, x0 the drawn token
    lanes = tl.arange(0, BLOCK_V)

    m = tl.full([BLOCK_V], float("-inf"), tl.float32)
    for v0 in range(0, n_vocab, BLOCK_V):
        m = tl.maximum(m, _values(L, base, v0 + lanes, n_vocab, t, scaled, BF16, LIBDEVICE))
    m_all = tl.max(m, 0)

    s = tl.zeros([BLOCK_V], tl.float32)
    best = tl.full([BLOCK_V], -1.0, tl.float32)  # per lane: the first largest exp wins
    best_i = tl.zeros([BLOCK_V], tl.int32)  # an all -inf row (NaN exps) gives 0, as torch
    for v0 in range(0, n_vocab, BLOCK_V):
        v = v0 + lanes
        e = _exp(_values(L, base, v, n_vocab, t, scaled, BF16, LIBDEVICE) - m_all, LIBDEVICE)
        s += tl.where(v < n_vocab, e, 0.0)
        take = (e > best) & (v < n_vocab)
        best = tl.where(take, e, best)
        best_i = tl.where(take, v, best_i)
    top = tl.max(best, 0)
    x0 = tl.min(tl.where(best == top, best_i, n_vocab), 0)
    if FORCED or scaled:
        x0 = tl.load(DRAWN + row).to(tl.int32)
    total = tl.sum(s, 0)
    e0 = _exp(_values(L, base, x0, n_vocab, t, scaled, BF16, LIBDEVICE) - m_all, LIBDEVICE)
    p = libdevice.div_rn(e0, total) if LIBDEVICE else e0 / total
    tl.store(X0 + row, x0.to(tl.int64))
    tl.store(CONF + row, p.to(tl.float64))


_require = functools.partial(require, "block_probabilities")


def _check(logits: torch.Tensor, temperature: torch.Tensor, drawn, n_rows: int) -> None:
    _require(logits.dim() == 3 and logits.is_floating_point(), "logits", "float [R, B, V]",
             logits)  # fmt: skip
    block = logits.shape[1]
    _require(temperature.shape == (n_rows,) and temperature.is_floating_point(), "temperature",
             f"float [R={n_rows}]", temperature)  # fmt: skip
    if drawn is not None:
        _require(drawn.shape == (n_rows, block) and drawn.dtype == torch.int64, "drawn",
                 f"int64 [R={n_rows}, B={block}]", drawn)  # fmt: skip


def _launch(logits, temp, drawn, rows, n_rows: int, block_v: int):
    """x0 [n_rows, B] int64 and its confidence float64 from one program per position."""
    block, n_vocab = logits.shape[1:]
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    x0 = torch.empty((n_rows, block), dtype=torch.int64, device=logits.device)
    conf = torch.empty((n_rows, block), dtype=torch.float64, device=logits.device)
    if n_rows * block == 0:
        return x0, conf
    _block_probs[(n_rows * block,)](
        logits,
        temp,
        x0 if drawn is None else drawn.contiguous(),  # unread: every T is 0 then
        x0,
        conf,
        x0 if rows is None else rows,  # unread unless FORCED
        n_vocab,
        block,
        logits.stride(0),
        logits.stride(1),
        BLOCK_V=block_v,
        BF16=logits.dtype == torch.bfloat16,
        LIBDEVICE=logits.is_cuda,
        FORCED=rows is not None,
        num_warps=8,
    )
    return x0, conf


def block_probabilities(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    drawn: torch.Tensor | None,
    *,
    block_v: int = BLOCK_V,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of ``reference.block_probabilities``: (x0 [R, B] int64, confidence
    [R, B] float64) of logits [R, B, V], temperature [R] and drawn [R, B] int64 or None
    (drawn ids must lie in [0, V): they are read unchecked, with no host sync)."""
    _check(logits, temperature, drawn, logits.shape[0])
    # T as the sampler has it, in the logits' dtype; nothing drawn: every row greedy, unscaled
    temp = temperature.to(logits.dtype).float()
    if drawn is None:
        temp = torch.zeros_like(temp)
    return _launch(logits, temp, drawn, None, logits.shape[0], block_v)


def token_probabilities(
    logits: torch.Tensor,
    rows: torch.Tensor,
    tokens: torch.Tensor,
    temperature: torch.Tensor,
    *,
    block_v: int = BLOCK_V,
) -> torch.Tensor:
    """Triton version of ``reference.token_probabilities``: [k, B] float64, the probability
    of tokens[i, b] at logits[rows[i], b] in the same softmax as `block_probabilities` (rows
    and tokens are read unchecked, with no host sync)."""
    _check(logits, temperature, tokens, rows.shape[0])
    _require(rows.dim() == 1 and not rows.is_floating_point(), "rows", "integer [k]", rows)
    temp = temperature.to(logits.dtype).float()
    return _launch(logits, temp, tokens, rows.contiguous(), rows.shape[0], block_v)[1]
