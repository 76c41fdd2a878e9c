"""The most probable completable assignment of a block's masked positions (DINGO's dynamic
program, "Constrained Inference for Diffusion LLMs", 2025), in torch on the scores' device.

Given per-position scores over the vocabulary (log-probabilities, plus Gumbel noise when
sampling), the tokens already committed in the block, the automaton state at the block's start
and the positions left after it, a Viterbi pass over (position, state) finds the assignment of
maximal total score whose state after the block can still reach an accepting state in the
positions left (`dist <= remaining`; the last block: accepting or DONE). Tokens of one class
act alike, so each position first keeps its best token per class, and the recurrence runs over
the automaton's (state, class) -> state edges: O(block * (vocab + edges)), vectorised over the
vocabulary and the edges, one short loop over the block's positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dllmserve.structured.automaton import TokenAutomaton

# Scores are floored here: a token the sampler forbids (-inf: EOS under logits_eos_inf, a top-k
# or top-p filter) stays usable when the constraint leaves nothing else, at a cost no allowed
# token reaches.
SCORE_FLOOR = -1e4


@dataclass(frozen=True)
class DeviceTables:
    class_of: torch.Tensor  # int64 [vocab]: class per token id; never-allowed ids: n_classes
    src: torch.Tensor  # int64 [E]
    cls: torch.Tensor  # int64 [E]
    dst: torch.Tensor  # int64 [E]
    dist: torch.Tensor  # int64 [S]


def device_tables(a: TokenAutomaton, device: torch.device) -> DeviceTables:
    """The automaton's tables on `device` (kept with the automaton)."""
    key = str(device)
    if key not in a.device_tables:
        class_of = torch.from_numpy(a.class_of.copy())
        class_of[class_of < 0] = a.n_classes
        a.device_tables[key] = DeviceTables(
            *(t.to(device) for t in (class_of, *map(torch.from_numpy, (a.src, a.cls, a.dst)))),
            dist=torch.from_numpy(a.dist).to(device),
        )
    return a.device_tables[key]


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
    starts: Sequence[int],
    remaining: Sequence[int],
    widths: Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [R, n] int64, feasible [R] bool) for R rows, each with its automaton: scores
    [R, n, vocab], fixed [R, n] int64 (the committed token, -1 where masked), the state at the
    block's start, the positions left after it and the block's width (columns past it are
    padding). Committed tokens are kept; masked positions get the best assignment after which
    the canvas stays completable. One DP over the rows' automata side by side, so the loop over
    positions is shared. No host sync; where `feasible` is False (committed tokens already broke
    the constraint) the row's tokens are meaningless."""
    dev = scores.device
    n = scores.shape[1]
    g = _joined(automata, scores, fixed, widths, dev)
    edge_scores = g.best[:, g.cls]  # [n, E]
    n_states, n_edges = g.row_of_state.numel(), g.src.numel()
    edge_ids = torch.arange(n_edges, device=dev)
    value = torch.full((n_states,), -torch.inf, device=dev)
    value[torch.tensor(starts, device=dev) + g.state_offset] = 0.0
    back = torch.empty((n, n_states), dtype=torch.long, device=dev)
    for p in range(n):
        cand = value[g.src] + edge_scores[p]
        value = torch.full_like(value, -torch.inf).scatter_reduce(0, g.dst, cand, "amax")
        hit = torch.where(cand == value[g.dst], edge_ids, n_edges)
        back[p] = torch.full((n_states,), n_edges, device=dev).scatter_reduce(0, g.dst, hit, "amin")
    left = torch.tensor(remaining, device=dev)[g.row_of_state]
    value = torch.where(g.dist <= left, value, -torch.inf)
    rows = len(automata)
    row_best = torch.full((rows,), -torch.inf, device=dev)
    row_best = row_best.scatter_reduce(0, g.row_of_state, value, "amax")
    ids = torch.where(
        value == row_best[g.row_of_state], torch.arange(n_states, device=dev), n_states
    )
    state = (
        torch.full((rows,), n_states, device=dev)
        .scatter_reduce(0, g.row_of_state, ids, "amin")
        .clamp(max=n_states - 1)
    )
    tokens = torch.empty((rows, n), dtype=torch.long, device=dev)
    for p in range(n - 1, -1, -1):
        e = back[p, state].clamp(max=n_edges - 1)
        tokens[:, p] = g.arg[p, g.cls[e]]
        state = g.src[e]
    return torch.where(fixed >= 0, fixed, tokens), row_best > -torch.inf


@dataclass(frozen=True)
class _Joined:
    """The rows' automata side by side: global state and class numbers, one edge list."""

    best: torch.Tensor  # [n, classes]: each position's best score per (row, class)
    arg: torch.Tensor  # [n, classes]: the token reaching it
    src: torch.Tensor  # [E] global states / classes
    cls: torch.Tensor
    dst: torch.Tensor
    dist: torch.Tensor  # [states]
    row_of_state: torch.Tensor  # [states]
    state_offset: torch.Tensor  # [R]: each row's first global state


def _joined(automata, scores, fixed, widths, dev) -> _Joined:
    """Each row's per-class scores (a committed position: 0 for its token's class; a padding
    column: 0 for the row's PAD class, whose edges keep every state) and its edges, renumbered
    into one graph."""
    n, vocab = scores.shape[1:]
    best, arg, src, cls, dst, dist, row_of = [], [], [], [], [], [], []
    offsets, s_off, c_off = [], 0, 0
    for r, a in enumerate(automata):
        t = device_tables(a, dev)
        C, S = a.n_classes, a.n_states  # column C: never-allowed tokens, reused as PAD
        class_of = t.class_of[:vocab]
        if class_of.numel() < vocab:  # logit rows past the vocabulary (padded embeddings)
            class_of = torch.nn.functional.pad(class_of, (0, vocab - class_of.numel()), value=C)
        b, g = _best_per_class(scores[r], class_of, C)
        pad = torch.arange(n, device=dev) >= widths[r]
        given = (fixed[r] >= 0) & ~pad
        column = torch.where(pad, C, class_of[fixed[r].clamp(min=0)])
        only = torch.arange(C + 1, device=dev) == column[:, None]
        only &= ~(given & (column == C))[:, None]  # a committed never-allowed token: no way on
        zero = torch.zeros((), device=dev)
        b = torch.where((given | pad)[:, None], torch.where(only, zero, -torch.inf), b)
        every = torch.arange(S, device=dev)
        best.append(b)
        arg.append(g)
        src.append(torch.cat([t.src, every]) + s_off)
        cls.append(torch.cat([t.cls, torch.full_like(every, C)]) + c_off)
        dst.append(torch.cat([t.dst, every]) + s_off)
        dist.append(t.dist)
        row_of.append(torch.full((S,), r, device=dev))
        offsets.append(s_off)
        s_off, c_off = s_off + S, c_off + C + 1
    return _Joined(
        best=torch.cat(best, dim=1),
        arg=torch.cat(arg, dim=1),
        src=torch.cat(src),
        cls=torch.cat(cls),
        dst=torch.cat(dst),
        dist=torch.cat(dist),
        row_of_state=torch.cat(row_of),
        state_offset=torch.tensor(offsets, device=dev),
    )


def _best_per_class(scores: torch.Tensor, class_of: torch.Tensor, n_classes: int):
    """Per position and class: the best score of a token of that class, and the lowest token id
    reaching it ([n, n_classes + 1] each; the last column collects never-allowed ids)."""
    n, vocab = scores.shape
    s = scores.float().clamp(min=SCORE_FLOOR)
    idx = class_of.expand(n, vocab)
    best = torch.full((n, n_classes + 1), -torch.inf, device=s.device)
    best = best.scatter_reduce(1, idx, s, "amax")
    ids = torch.arange(vocab, device=s.device).expand(n, vocab)
    hit = torch.where(s == best.gather(1, idx), ids, vocab)
    arg = torch.full((n, n_classes + 1), vocab, dtype=torch.long, device=s.device)
    arg = arg.scatter_reduce(1, idx, hit, "amin")
    best[:, n_classes] = -torch.inf
    return best, arg
