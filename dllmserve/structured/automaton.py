"""A constraint's token-level automaton: the byte DFA lifted to the model's vocabulary.

A diffusion LM fills positions in any order, so the sampler needs every (state, token) -> state
transition, not the allowed tokens of one state at a time. Tokens that act alike in every state
share a class (an answer's string content lets ~all ordinary tokens through in the same way), so
the transitions are a short edge list (state, class) -> state and a class id per token id.
After an accepting state the stop tokens (EOS, EOT) lead to DONE, which loops on them: the
whole canvas is the answer, then the EOS fill. `dist` is each state's fewest tokens to an
accepting state: a canvas is completable from state s with r positions left iff dist[s] <= r.

The lift walks all tokens through the DFA at once, one byte depth at a time (numpy), pruning
(state, token) pairs at the first refused byte; a hash of its (state -> state) pairs groups the
tokens into classes, checked exactly afterwards.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from dllmserve.errors import ValidationError
from dllmserve.structured.dfa import ByteDFA
from dllmserve.structured.vocab import TokenBytes

MAX_PAIRS = 60_000_000  # (state, token) pairs alive at once while lifting: ~1.5 GB


@dataclass
class TokenAutomaton:
    n_states: int  # the DFA's live states, then DONE (the last)
    n_classes: int  # token classes, the stop class last
    start: int
    class_of: np.ndarray  # int64 [vocab]: each token id's class, -1 where never allowed
    src: np.ndarray  # int64 [E]: the edges, sorted by src * n_classes + cls
    cls: np.ndarray  # int64 [E]
    dst: np.ndarray  # int64 [E]
    dist: np.ndarray  # int64 [S]: fewest tokens to an accepting state
    compile_seconds: float = 0.0
    device_tables: dict = field(default_factory=dict, repr=False)  # the DP's, per device

    @property
    def min_length(self) -> int:
        """The shortest canvas with an accepted answer."""
        return int(self.dist[self.start])

    @property
    def done(self) -> int:
        return self.n_states - 1

    def step(self, state: int, token: int) -> int:
        """The state after `token` (-1: refused)."""
        c = int(self.class_of[token]) if 0 <= token < len(self.class_of) else -1
        if c < 0 or state < 0:
            return -1
        key = state * self.n_classes + c
        keys = self.src * self.n_classes + self.cls
        i = int(np.searchsorted(keys, key))
        return int(self.dst[i]) if i < len(keys) and keys[i] == key else -1

    def walk(self, state: int, tokens) -> int:
        for t in tokens:
            state = self.step(state, int(t))
        return state


def lift(dfa: ByteDFA, tb: TokenBytes, field_name: str, deadline: float) -> TokenAutomaton:
    """The token automaton of `dfa` over `tb`'s vocabulary. Raises ValidationError naming
    `field_name` past `deadline` (time.monotonic()) or MAX_PAIRS, or when no answer fits."""
    src, tok, dst = _token_moves(dfa, tb, field_name, deadline)
    cls_of_tok, n_cls = _classes(src, tok, dst, len(tb.ids), dfa.trans.shape[0])
    key, first = np.unique(src * n_cls + cls_of_tok[tok], return_index=True)
    e_src, e_cls, e_dst = key // n_cls, key % n_cls, dst[first]  # one edge per (state, class)
    s_done, c_stop = dfa.trans.shape[0], n_cls
    acc = np.flatnonzero(dfa.accepting)
    e_src = np.concatenate([e_src, acc, [s_done]])
    e_cls = np.concatenate([e_cls, np.full(len(acc) + 1, c_stop)])
    e_dst = np.concatenate([e_dst, np.full(len(acc) + 1, s_done)])
    class_of = np.full(tb.vocab_size, -1, dtype=np.int64)
    class_of[tb.ids] = cls_of_tok
    class_of[list(tb.stop_ids)] = c_stop
    finals = np.concatenate([acc, [s_done]])
    return _prune(dfa.start, s_done + 1, n_cls + 1, class_of, e_src, e_cls, e_dst, finals,
                  field_name)  # fmt: skip


def _token_moves(dfa: ByteDFA, tb: TokenBytes, field_name: str, deadline: float):
    """Every (state, token index, next state) with the token's bytes all accepted."""
    trans, lengths = dfa.trans, tb.lengths
    first = tb.data[tb.offsets[:-1]]
    order = np.argsort(first, kind="stable")
    counts = np.bincount(first, minlength=256)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ss, bb = np.nonzero(trans >= 0)
    n = counts[bb]
    _check_size(int(n.sum()), field_name)
    src = np.repeat(ss, n).astype(np.int64)
    pos = np.repeat(starts[bb] - np.cumsum(n) + n, n) + np.arange(int(n.sum()))
    tok = order[pos]
    cur = np.repeat(trans[ss, bb], n).astype(np.int64)
    out: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    depth = 1
    while len(tok):
        if time.monotonic() > deadline:
            raise ValidationError(field_name, "compiling it took over the time limit: simplify it")
        end = lengths[tok] == depth
        out.append((src[end], tok[end], cur[end]))
        src, tok, cur = src[~end], tok[~end], cur[~end]
        cur = trans[cur, tb.data[tb.offsets[tok] + depth]].astype(np.int64)
        alive = cur >= 0
        src, tok, cur = src[alive], tok[alive], cur[alive]
        depth += 1
    return tuple(np.concatenate(parts) for parts in zip(*out, strict=True))


def _check_size(pairs: int, field_name: str) -> None:
    if pairs > MAX_PAIRS:
        raise ValidationError(
            field_name,
            f"its automaton is too large for this vocabulary ({pairs} state-token "
            f"pairs, at most {MAX_PAIRS}): simplify it",  # fmt: skip
        )


def _classes(src, tok, dst, n_tok: int, n_states: int) -> tuple[np.ndarray, int]:
    """Each token's class (-1: no move anywhere): tokens with the same (state -> state) map."""
    x = (src * (n_states + 1) + dst + 1).astype(np.uint64)
    x = (x ^ (x >> np.uint64(31))) * np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(29))) * np.uint64(0xBF58476D1CE4E5B9)
    h = np.zeros(n_tok, dtype=np.uint64)
    np.add.at(h, tok, x ^ (x >> np.uint64(32)))
    moves = np.bincount(tok, minlength=n_tok)
    cls = np.full(n_tok, -1, dtype=np.int64)
    uniq, inv = np.unique(h[moves > 0], return_inverse=True)
    cls[moves > 0] = inv
    _check_classes(src, tok, dst, cls, moves, len(uniq))
    return cls, len(uniq)


def _check_classes(src, tok, dst, cls, moves, n_cls: int) -> None:
    """The hash grouped only tokens with identical maps: one target per (state, class), and as
    many moves per token as its class has."""
    key = src * n_cls + cls[tok]
    order = np.argsort(key, kind="stable")
    k, d = key[order], dst[order]
    same = k[1:] == k[:-1]
    per_class = np.bincount(np.unique(key) % n_cls, minlength=n_cls)
    if np.any(d[1:][same] != d[:-1][same]) or np.any(moves[cls >= 0] != per_class[cls[cls >= 0]]):
        raise RuntimeError("token classes collided; recompiling with another hash would fix it")


def _prune(start, n_states, n_cls, class_of, src, cls, dst, finals, field_name):
    """Keep the states reachable from `start` that can still reach a final state; renumber."""
    dist = _distances(n_states, src, dst, finals)
    reach = _reachable(n_states, src, dst, start)
    keep = reach & (dist >= 0)
    if not keep[start]:
        raise ValidationError(field_name, "no answer written with this model's tokens matches it")
    new = np.cumsum(keep) - 1
    live = keep[src] & keep[dst]
    src, cls, dst = new[src[live]], cls[live], new[dst[live]]
    order = np.argsort(src * n_cls + cls, kind="stable")
    return TokenAutomaton(
        n_states=int(keep.sum()), n_classes=n_cls, start=int(new[start]), class_of=class_of,
        src=src[order], cls=cls[order], dst=dst[order], dist=dist[keep],
    )  # fmt: skip


def _distances(n: int, src, dst, finals) -> np.ndarray:
    """Fewest edges from each state to a final one (-1: none), by BFS on the reversed graph."""
    pairs = np.unique(np.stack([dst, src], axis=1), axis=0)
    preds: list[list[int]] = [[] for _ in range(n)]
    for d, s in pairs.tolist():
        preds[d].append(s)
    dist = np.full(n, -1, dtype=np.int64)
    queue = deque(int(f) for f in finals)
    dist[finals] = 0
    while queue:
        d = queue.popleft()
        for s in preds[d]:
            if dist[s] < 0:
                dist[s] = dist[d] + 1
                queue.append(s)
    return dist


def _reachable(n: int, src, dst, start: int) -> np.ndarray:
    pairs = np.unique(np.stack([src, dst], axis=1), axis=0)
    succ: list[list[int]] = [[] for _ in range(n)]
    for s, d in pairs.tolist():
        succ[s].append(d)
    seen = np.zeros(n, dtype=bool)
    seen[start] = True
    stack = [start]
    while stack:
        for d in succ[stack.pop()]:
            if not seen[d]:
                seen[d] = True
                stack.append(d)
    return seen
