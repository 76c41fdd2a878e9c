"""The most probable completable assignment of a block's masked positions (DINGO's dynamic
program, "Constrained Inference for Diffusion LLMs", 2025), in torch on the scores' device.

Given per-position scores over the vocabulary (log-probabilities, plus Gumbel noise when
sampling), the tokens already committed in the block, the automaton state at the block's start
and the positions left after it, a Viterbi pass over (position, state) finds the assignment of
maximal total score whose state after the block can still reach an accepting state in the
positions left (`dist <= remaining`; the last block: accepting or DONE). Tokens of one class
act alike, so each position first keeps its best token per class, and the recurrence runs over
the automaton's (state, class) -> state edges: O(block * (vocab + edges)), vectorised over the
rows, the vocabulary and the edges, one short loop over the block's positions. The per-class
best is a segmented max over the vocabulary laid out in class order (`kernels.segment_argmax`:
a Triton kernel on the GPU), not a scatter over classes, whose atomics serialise on the large
classes. Nothing here
waits for the device: the rows' joined graph is built once per set of automata (cached) and
every per-step input arrives as a device tensor.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dllmserve import kernels
from dllmserve.structured.automaton import TokenAutomaton

# Scores are floored here: a token the sampler forbids (-inf: EOS under logits_eos_inf, a top-k
# or top-p filter) stays usable when the constraint leaves nothing else, at a cost no allowed
# token reaches.
SCORE_FLOOR = -1e4
SEGMENT = 4096  # ids per segment of the class-ordered vocabulary: bounds one program's loop


GRAPHS_KEPT = 16  # joined graphs cached (a batch's set of constrained requests changes slowly)
_graphs: OrderedDict[tuple, Graph] = OrderedDict()


@dataclass(frozen=True)
class Graph:
    """Rows' automata side by side: row r's class c is global class r * width + c (its column
    n_cls[r] collects the never-allowed ids and is the PAD class, whose edges keep every
    state); states are numbered row after row."""

    automata: tuple[TokenAutomaton, ...]  # held: the cache key is their identities
    class_of: torch.Tensor  # int64 [distinct automata, vocab]: the class per token id
    table: torch.Tensor  # int64 [R]: each row's class_of row (rows of one schema share it)
    order: torch.Tensor  # int32 [distinct, vocab]: the ids by class, ascending within one
    bounds: torch.Tensor  # int32 [distinct, n_seg, 2]: [lo, hi) in order of each segment
    segment_class: torch.Tensor  # int64 [distinct, n_seg]: the class of each segment
    n_cls: torch.Tensor  # int64 [R]: each row's never-allowed / PAD column
    width: int  # classes per row, padded: max n_classes + 1
    src: torch.Tensor  # int64 [E]: global states / classes
    cls: torch.Tensor
    dst: torch.Tensor
    dist: torch.Tensor  # int64 [S]
    row_of_state: torch.Tensor  # int64 [S]
    state_offset: torch.Tensor  # int64 [R]: each row's first global state


def graph(automata: Sequence[TokenAutomaton], vocab: int, device: torch.device) -> Graph:
    """The joined graph of `automata` over a logit width `vocab` on `device` (cached)."""
    key = (tuple(map(id, automata)), vocab, str(device))
    g = _graphs.get(key)
    if g is not None and all(x is y for x, y in zip(g.automata, automata, strict=True)):
        _graphs.move_to_end(key)
        return g
    g = _build_graph(tuple(automata), vocab, device)
    _graphs[key] = g
    while len(_graphs) > GRAPHS_KEPT:
        _graphs.popitem(last=False)
    return g


def _build_graph(automata: tuple[TokenAutomaton, ...], vocab: int, device) -> Graph:
    width = max(a.n_classes for a in automata) + 1
    distinct = list({id(a): a for a in automata}.values())
    table = np.array([next(i for i, d in enumerate(distinct) if d is a) for a in automata])
    class_of = np.empty((len(distinct), vocab), dtype=np.int64)
    for i, a in enumerate(distinct):
        known = a.class_of[:vocab]  # logit rows past the vocabulary (padded embeddings): C
        class_of[i] = a.n_classes
        class_of[i, : len(known)] = np.where(known < 0, a.n_classes, known)
    src, cls, dst, row_of, offsets, s_off = [], [], [], [], [], 0
    for r, a in enumerate(automata):
        C, S = a.n_classes, a.n_states
        every = np.arange(S)
        src.append(np.concatenate([a.src, every]) + s_off)
        cls.append(np.concatenate([a.cls, np.full(S, C)]) + r * width)
        dst.append(np.concatenate([a.dst, every]) + s_off)
        row_of.append(np.full(S, r))
        offsets.append(s_off)
        s_off += S
    edges = [np.concatenate(x) for x in (src, cls, dst)]
    dist = np.concatenate([a.dist for a in automata])
    n_cls = np.array([a.n_classes for a in automata])
    layout = [_to_device(x, device) for x in _segments(class_of, width)]
    host = [class_of, table, n_cls, *edges, dist, np.concatenate(row_of), np.array(offsets)]
    class_of_d, table, n_cls, *rest = (_to_device(x.astype(np.int64), device) for x in host)
    return Graph(automata, class_of_d, table, *layout, n_cls, width, *rest)


def _segments(class_of: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each distinct automaton's ids in class order (ascending within a class) and that order
    cut into segments of at most SEGMENT ids, none spanning two classes; layouts with fewer
    segments are padded with empty ones (of class 0, which they leave unchanged)."""
    vocab = class_of.shape[1]
    per = []
    for row in class_of:
        counts = np.bincount(row, minlength=width)
        pieces = -(-counts // SEGMENT)  # segments per class, 0 for an empty one
        seg_cls = np.repeat(np.arange(width), pieces)
        nth = np.arange(len(seg_cls)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
        lo = (np.cumsum(counts) - counts)[seg_cls] + nth * SEGMENT
        hi = np.minimum(lo + SEGMENT, np.cumsum(counts)[seg_cls])
        per.append((np.argsort(row, kind="stable"), np.stack([lo, hi], 1), seg_cls))
    n_seg = max(len(c) for _, _, c in per)
    order = np.stack([o for o, _, _ in per]).astype(np.int32)
    bounds = np.full((len(per), n_seg, 2), vocab, dtype=np.int32)
    segment_class = np.zeros((len(per), n_seg), dtype=np.int64)
    for i, (_, b, c) in enumerate(per):
        bounds[i, : len(c)], segment_class[i, : len(c)] = b, c
    return order, bounds, segment_class


def _to_device(x: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(x)
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t


def best_assignment(
    a: TokenAutomaton, scores: torch.Tensor, fixed: torch.Tensor, start: int, remaining: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One row of `best_assignments`: (tokens [n], feasible) for scores [n, vocab], fixed [n]."""
    tokens, feasible = best_assignments(
        [a], scores[None], fixed[None], [start], [remaining], [scores.shape[0]]
    )
    return tokens[0], feasible[0]


def best_assignments(
    automata: Sequence[TokenAutomaton],
    scores: torch.Tensor,
    fixed: torch.Tensor,
    starts: Sequence[int] | torch.Tensor,
    remaining: Sequence[int] | torch.Tensor,
    widths: Sequence[int] | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [R, n] int64, feasible [R] bool) for R rows, each with its automaton: scores
    [R, n, vocab], fixed [R, n] int64 (the committed token, -1 where masked), the state at the
    block's start, the positions left after it and the block's width (columns past it are
    padding). Committed tokens are kept; masked positions get the best assignment after which
    the canvas stays completable. One DP over the rows' automata side by side, so the loop over
    positions is shared. Where `feasible` is False (committed tokens already broke the
    constraint) the row's tokens are meaningless."""
    dev = scores.device
    g = graph(automata, scores.shape[-1], dev)
    rows = torch.arange(len(automata), device=dev)
    widths = torch.as_tensor(widths, device=dev)
    best, arg = class_scores(g, rows, scores, fixed, widths)
    return viterbi(g, best, arg, fixed, torch.as_tensor(starts, device=dev),
                   torch.as_tensor(remaining, device=dev))  # fmt: skip


def class_scores(
    g: Graph, rows: torch.Tensor, scores: torch.Tensor, fixed: torch.Tensor, widths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """For the graph's `rows` (scores [k, n, vocab], fixed [k, n], widths [k]): per position
    and class, the best score of a token of that class and the lowest token id reaching it
    ([k, n, width] each). A committed position scores 0 for its token's class only, a padding
    column 0 for the PAD class only."""
    k, n, vocab = scores.shape
    dev = scores.device
    layouts = g.table[rows]
    class_of, n_cls = g.class_of[layouts], g.n_cls[rows, None, None]
    seg_best, seg_arg = kernels.segment_argmax(
        scores.float(), g.order, g.bounds, layouts, SCORE_FLOOR
    )
    idx = g.segment_class[layouts][:, None, :].expand(k, n, -1)  # a class's segments -> it
    best = torch.full((k, n, g.width), -torch.inf, device=dev)
    best = best.scatter_reduce(2, idx, seg_best, "amax")
    hit = torch.where(seg_best == best.gather(2, idx), seg_arg, vocab)
    arg = torch.full((k, n, g.width), vocab, dtype=torch.int32, device=dev)
    arg = arg.scatter_reduce(2, idx, hit, "amin").long()
    column_ids = torch.arange(g.width, device=dev)
    best = best.masked_fill(column_ids == n_cls, -torch.inf)
    pad = torch.arange(n, device=dev) >= widths[:, None]
    given = (fixed >= 0) & ~pad
    column = torch.where(pad, n_cls[:, :, 0], class_of.gather(1, fixed.clamp(min=0)))
    only = column_ids == column[..., None]
    only &= ~(given & (column == n_cls[:, :, 0]))[..., None]  # a committed never-allowed token
    zero = torch.zeros((), device=dev)
    best = torch.where((given | pad)[..., None], torch.where(only, zero, -torch.inf), best)
    return best, arg


def viterbi(
    g: Graph,
    best: torch.Tensor,
    arg: torch.Tensor,
    fixed: torch.Tensor,
    starts: torch.Tensor,
    remaining: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The DP over the joined graph for every row's `class_scores` (best, arg [R, n, width]):
    (tokens [R, n], feasible [R])."""
    R, n, _ = best.shape
    dev = best.device
    edge_scores = best.transpose(0, 1).reshape(n, -1)[:, g.cls]  # [n, E]
    n_states, n_edges = g.row_of_state.numel(), g.src.numel()
    edge_ids = torch.arange(n_edges, device=dev)
    seen = torch.full((n + 1, n_states), -torch.inf, device=dev)  # the best after each position
    after, edge_rows = seen.unbind(), edge_scores.unbind()
    after[0].index_fill_(0, starts + g.state_offset, 0.0)
    for p in range(n):  # only the scores in the loop (three kernels); the ways in come after it
        after[p + 1].scatter_reduce_(0, g.dst, after[p][g.src] + edge_rows[p], "amax")
    value = seen[n]
    cand = seen[:-1, g.src] + edge_scores  # the loop's candidates, bit for bit
    hit = torch.where(cand == seen[1:, g.dst], edge_ids, n_edges)
    edge = torch.full((n, n_states), n_edges, device=dev)
    edge = edge.scatter_reduce(1, g.dst.expand(n, -1), hit, "amin").clamp(max=n_edges - 1)
    prev = g.src[edge]  # [n, S]: each state's best way in, per position
    token = arg.transpose(0, 1).reshape(n, -1).gather(1, g.cls[edge])
    value = torch.where(g.dist <= remaining[g.row_of_state], value, -torch.inf)
    row_best = torch.full((R,), -torch.inf, device=dev)
    row_best = row_best.scatter_reduce(0, g.row_of_state, value, "amax")
    ids = torch.where(
        value == row_best[g.row_of_state], torch.arange(n_states, device=dev), n_states
    )
    state = (
        torch.full((R,), n_states, device=dev)
        .scatter_reduce(0, g.row_of_state, ids, "amin")
        .clamp(max=n_states - 1)
    )
    states, prev = [state] * n, prev.unbind()  # each row's state after each position
    for p in range(n - 1, 0, -1):
        states[p - 1] = prev[p][states[p]]
    tokens = token.gather(1, torch.stack(states)).T
    return torch.where(fixed >= 0, fixed, tokens), row_best > -torch.inf
