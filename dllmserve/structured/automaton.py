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

MAX_PAIRS = 100_000_000  # (state, token) pairs walked while lifting (a few GB at most)


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
    keys: np.ndarray = field(init=False, repr=False)  # src * n_classes + cls, sorted

    def __post_init__(self) -> None:
        self.keys = self.src * self.n_classes + self.cls

    @property
    def min_length(self) -> int:
        """The shortest canvas with an accepted answer."""
        return int(self.dist[self.start])

    def step(self, state: int, token: int) -> int:
        """The state after `token` (-1: refused)."""
        c = int(self.class_of[token]) if 0 <= token < len(self.class_of) else -1
        if c < 0 or state < 0:
            return -1
        key = state * self.n_classes + c
        i = int(np.searchsorted(self.keys, key))
        return int(self.dst[i]) if i < len(self.keys) and self.keys[i] == key else -1

    def walk(self, state: int, tokens) -> int:
        for t in tokens:
            state = self.step(state, int(t))
        return state


def lift(dfa: ByteDFA, tb: TokenBytes, field_name: str, deadline: float) -> TokenAutomaton:
    """The token automaton of `dfa` over `tb`'s vocabulary. Raises ValidationError naming
    `field_name` past `deadline` (time.monotonic()) or MAX_PAIRS, or when no answer fits."""
    n_tok, n_states = len(tb.ids), dfa.trans.shape[0]
    everyone = np.arange(n_tok)
    cls_of_tok, n_cls = _classes(
        _token_moves(dfa, tb, everyone, field_name, deadline), n_tok, n_states
    )
    reps = np.unique(cls_of_tok, return_index=True)[1]  # one token per class carries its edges
    reps = reps[cls_of_tok[reps] >= 0]
    moves = list(_token_moves(dfa, tb, reps, field_name, deadline))
    e_src, e_tok, e_dst = (np.concatenate(parts) for parts in zip(*moves, strict=True))
    e_cls = cls_of_tok[e_tok]
    s_done, c_stop = dfa.trans.shape[0], n_cls
    acc = np.flatnonzero(dfa.accepting)
    e_src = np.concatenate([e_src, acc, [s_done]])
    e_cls = np.concatenate([e_cls, np.full(len(acc) + 1, c_stop)])
    e_dst = np.concatenate([e_dst, np.full(len(acc) + 1, s_done)])
    class_of = np.full(tb.vocab_size, -1, dtype=np.int64)
    class_of[tb.ids] = cls_of_tok
    class_of[list(tb.stop_ids)] = c_stop
    finals = np.concatenate([acc, [s_done]])
    return _prune(
        dfa.start, s_done + 1, n_cls + 1, class_of, e_src, e_cls, e_dst, finals, field_name
    )


def _token_moves(
    dfa: ByteDFA, tb: TokenBytes, tokens: np.ndarray, field_name: str, deadline: float
):
    """Yields, per token length, every (state, token index, next state) of `tokens` with the
    token's bytes all accepted. A length's tokens walk all their bytes at once through the
    table (a refused byte leads to an absorbing dead row, so no pair is dropped mid-walk), from
    every state that accepts their first byte."""
    n_states = dfa.trans.shape[0]
    table = np.vstack([dfa.trans, np.full((1, 256), -1, np.int32)])
    table[table < 0] = n_states  # the dead state
    flat = table.reshape(-1).astype(np.int64)
    lengths = tb.lengths[tokens]
    total = 0
    for length in np.unique(lengths).tolist():
        if time.monotonic() > deadline:
            raise ValidationError(field_name, "compiling it took over the time limit: simplify it")
        toks = tokens[lengths == length]
        raw = tb.data[tb.offsets[toks][:, None] + np.arange(length)].astype(np.int64)
        src, col = np.nonzero(dfa.trans[:, raw[:, 0]] >= 0)
        total += len(src)
        _check_size(total, field_name)
        cur = flat[src * 256 + raw[col, 0]]
        for d in range(1, length):
            cur = flat[cur * 256 + raw[col, d]]
        live = cur < n_states
        yield src[live], toks[col[live]], cur[live]


def _check_size(pairs: int, field_name: str) -> None:
    if pairs > MAX_PAIRS:
        raise ValidationError(
            field_name,
            f"its automaton is too large for this vocabulary ({pairs} state-token "
            f"pairs, at most {MAX_PAIRS}): simplify it",
        )


def _classes(moves, n_tok: int, n_states: int) -> tuple[np.ndarray, int]:
    """Each token's class (-1: no move anywhere): tokens with the same (state -> state) map,
    found by a hash of the map, and checked by a second, independent one (two maps that differ
    share both with probability ~2^-100). `moves` yields (state, token, next) arrays."""
    count = np.zeros(n_tok, dtype=np.int64)
    first, second = np.zeros(n_tok), np.zeros(n_tok)
    for src, tok, dst in moves:
        pair = (src * (n_states + 1) + dst + 1).astype(np.uint64)
        count += np.bincount(tok, minlength=n_tok)
        first += _map_hash(pair, tok, n_tok, 0x9E3779B97F4A7C15)
        second += _map_hash(pair, tok, n_tok, 0x632BE5AB)
    cls = np.full(n_tok, -1, dtype=np.int64)
    has = count > 0
    uniq, inv = np.unique(first[has], return_inverse=True)
    cls[has] = inv
    both = np.unique(np.stack([first[has], second[has]], axis=1), axis=0)
    if len(both) != len(uniq):
        raise RuntimeError("token classes collided; a compile with another hash would fix it")
    return cls, len(uniq)


def _map_hash(pair: np.ndarray, tok: np.ndarray, n_tok: int, salt: int) -> np.ndarray:
    """Per token, the sum of a mixed hash in [0, 1) of each of its (state, next) pairs. Each
    token's pairs come in increasing state order, so tokens with the same map add the same
    numbers in the same order: bit-identical sums."""
    x = pair * np.uint64(salt)
    x = (x ^ (x >> np.uint64(31))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(29))) * np.uint64(0x94D049BB133111EB)
    unit = ((x ^ (x >> np.uint64(32))) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return np.bincount(tok, weights=unit, minlength=n_tok)


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
        n_states=int(keep.sum()),
        n_classes=n_cls,
        start=int(new[start]),
        class_of=class_of,
        src=src[order],
        cls=cls[order],
        dst=dst[order],
        dist=dist[keep],
    )


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
