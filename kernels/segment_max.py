"""Segmented max over a permuted vocabulary: the best score of each token class per position
(structured outputs' DP, `dllmserve.structured.dp`). PyTorch reference:
`reference.segment_argmax`.

The tokens are laid out once per automaton in class order (`order`: ids ascending within a
class) and each class's run is cut into segments of at most a few thousand ids (`bounds`), so
a program reads one segment of one (row, position): the scores it gathers sit in a few
contiguous stretches, no program loops over a huge class, and no two programs write the same
output. A scatter-max over classes instead (one atomic per vocabulary entry, all of a large
class's entries on one address) serialises on the hot addresses: about 20 ms a step for 32
rows of 32 positions over a 126k vocabulary on an H100.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ._common import require

_BLOCK = 1024


@triton.jit
def _segment_argmax_kernel(
    S, ORDER, BOUNDS, TABLE, BEST, ARG, n, V, n_seg, floor, BLOCK: tl.constexpr
):
    """BEST/ARG[r, p, t]: the max of max(S[r, p, id], floor) over segment t of row r's layout
    and the lowest id reaching it (ids ascend along a segment, so the first hit is kept)."""
    t = tl.program_id(0)
    rp = tl.program_id(1).to(tl.int64)
    d = tl.load(TABLE + rp // n).to(tl.int64)
    lo = tl.load(BOUNDS + (d * n_seg + t) * 2)
    hi = tl.load(BOUNDS + (d * n_seg + t) * 2 + 1)
    best = tl.full([], -float("inf"), tl.float32)
    arg = tl.zeros([], tl.int32) + V
    offs = tl.arange(0, BLOCK)
    for j in range(lo, hi, BLOCK):
        ok = j + offs < hi
        ids = tl.load(ORDER + d * V + j + offs, mask=ok, other=0)
        s = tl.load(S + rp * V + ids, mask=ok, other=0.0)
        s = tl.where(ok, tl.maximum(s, floor), -float("inf"))
        m = tl.max(s, 0)
        first = tl.min(tl.where(s == m, ids, V), 0)
        arg = tl.where(m > best, first, arg)
        best = tl.maximum(best, m)
    out = rp * n_seg + t
    tl.store(BEST + out, best)
    tl.store(ARG + out, arg)


_require = functools.partial(require, "segment_argmax")


def segment_argmax(
    scores: torch.Tensor,
    order: torch.Tensor,
    bounds: torch.Tensor,
    table: torch.Tensor,
    floor: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(best fp32, arg int32), each [k, n, n_seg], of scores [k, n, V] fp32: row r uses layout
    table[r] of order [D, V] int32 (a permutation of the ids) and bounds [D, n_seg, 2] int32
    ([lo, hi) of each segment in that order; empty segments give -inf and V)."""
    _require(
        scores.dim() == 3 and scores.dtype == torch.float32, "scores", "fp32 [k, n, V]", scores
    )
    k, n, vocab = scores.shape
    _require(order.dim() == 2 and order.shape[1] == vocab and order.dtype == torch.int32,
             "order", f"int32 [D, V={vocab}]", order)  # fmt: skip
    _require(bounds.dim() == 3 and bounds.shape[0] == order.shape[0] and bounds.shape[2] == 2
             and bounds.dtype == torch.int32, "bounds", "int32 [D, n_seg, 2]", bounds)  # fmt: skip
    _require(table.shape == (k,) and not table.is_floating_point(), "table", f"int [k={k}]", table)
    n_seg = bounds.shape[1]
    best = torch.empty((k, n, n_seg), dtype=torch.float32, device=scores.device)
    arg = torch.empty((k, n, n_seg), dtype=torch.int32, device=scores.device)
    if best.numel():
        _segment_argmax_kernel[(n_seg, k * n)](
            scores.contiguous(), order.contiguous(), bounds.contiguous(), table.contiguous(),
            best, arg, n, vocab, n_seg, float(floor), BLOCK=_BLOCK,
        )  # fmt: skip
    return best, arg
