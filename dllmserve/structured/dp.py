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
    """(tokens [n] int64, feasible bool scalar) for scores [n, vocab] and fixed [n] int64 (the
    committed token, -1 where masked): the committed tokens are kept, the masked positions get
    the best assignment after which the canvas stays completable. Without a host sync; when
    `feasible` is False (the committed tokens already broke the constraint) the tokens are
    meaningless."""
    t = device_tables(a, scores.device)
    n, vocab = scores.shape
    dev, C, S = scores.device, a.n_classes, a.n_states
    class_of = t.class_of[:vocab]
    if class_of.numel() < vocab:  # logit rows past the vocabulary (padded embeddings)
        class_of = torch.nn.functional.pad(class_of, (0, vocab - class_of.numel()), value=C)
    best, arg = _best_per_class(scores, class_of, C)
    is_fixed = fixed >= 0
    fixed_cls = class_of[fixed.clamp(min=0)]
    one = torch.arange(C + 1, device=dev) == fixed_cls[:, None]
    zero = torch.zeros((), device=dev)
    best = torch.where(is_fixed[:, None], torch.where(one, zero, -torch.inf), best)
    edge_scores = best[:, t.cls]  # [n, E]
    n_edges = t.src.numel()
    edge_ids = torch.arange(n_edges, device=dev)
    value = torch.full((S,), -torch.inf, device=dev)
    value[start] = 0.0
    back = torch.empty((n, S), dtype=torch.long, device=dev)
    for p in range(n):
        cand = value[t.src] + edge_scores[p]
        value = torch.full((S,), -torch.inf, device=dev).scatter_reduce(0, t.dst, cand, "amax")
        hit = torch.where(cand == value[t.dst], edge_ids, n_edges)
        back[p] = torch.full((S,), n_edges, device=dev).scatter_reduce(0, t.dst, hit, "amin")
    value = torch.where(t.dist <= remaining, value, -torch.inf)
    state = value.argmax()
    tokens = torch.empty(n, dtype=torch.long, device=dev)
    for p in range(n - 1, -1, -1):
        e = back[p, state].clamp(max=n_edges - 1)
        tokens[p] = arg[p, t.cls[e]]
        state = t.src[e]
    return torch.where(is_fixed, fixed, tokens), value.max() > -torch.inf


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
