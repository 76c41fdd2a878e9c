"""CUDA graphs for batch-1 FULL and SELECT iterations: one request, one lane, whole sequence.

Run eagerly, a batch-1 forward launches ~10 kernels per layer and a SELECT ~5 more for the
selection; for short sequences the host cannot launch them as fast as the GPU runs them.
Replaying a captured forward removes that overhead (H100, LLaDA-8B shape, 384 tokens: SELECT
15.8 -> 12.6 ms; FULL stays at 11 ms, since 384 tokens make it compute-bound).
Only an iteration whose packed batch is exactly one dense lane (no other request, no
REUSE lane, no cfg lane) is graphed: its shape is the request's own, so no padding changes a
GEMM's shape and the replay gives the eager forward's results bit for bit.

A graph is exact for one *key*: the token count and every Python value and tensor shape of the
iteration's `BatchAttention` (phase, sequence length, kept counts per layer, page-table width,
...), so nothing the forward decides on the host can differ between capture and replay. Its
tensor inputs are static buffers that each replay first refreshes from the iteration's own
tensors, as `ReuseGraphs` does; a SELECT's page stores go to the pages of the refreshed page
table. The forward has no host sync and no data-dependent host control flow (the selection's
grids come from the shapes and `max_keep`; programs past a request's real length exit on the
device), which is what makes it capturable.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, fields, replace

import torch

from dllmserve.engine.attention import BatchAttention
from dllmserve.engine.batch import IterationBatch
from dllmserve.engine.cuda_graphs import capture
from dllmserve.engine.kv_cache import KVCache
from dllmserve.models.transformer import DiffusionTransformer

MAX_GRAPHS = 8


def _value_key(v: object) -> object:
    """The part of a graph key one `BatchAttention` field gives."""
    if isinstance(v, torch.Tensor):
        return tuple(v.shape), v.dtype
    if isinstance(v, list):
        return tuple(v)
    if isinstance(v, KVCache):
        return None  # the engine's one cache: its tensors are fixed for the engine's life
    return v


@dataclass
class _DenseGraph:
    static: dict[str, torch.Tensor]  # input_ids, positions and every BatchAttention tensor
    graph: torch.cuda.CUDAGraph
    hidden: torch.Tensor | None = None


class DenseGraphs:
    """Captures lazily, one graph per key (see the module docstring), and keeps at most
    `max_graphs` of them, dropping the least recently used.

    The bound matters because the key holds the sequence length: in serving every distinct
    prompt length (with the same generation length) is a new key, and each graph keeps its
    output buffer and its executable graph alive, so an unbounded cache would grow with the
    traffic. A request reuses its keys block after block (its FULL and its SELECT iteration,
    and a shorter last block's SELECT), so a few entries cover the requests of recent lengths;
    a dropped key is simply captured again on its next use.

    `captures` and `replays` count what happened (tests check that graphs were used).
    """

    def __init__(
        self, model: DiffusionTransformer, mempool: tuple, max_graphs: int = MAX_GRAPHS
    ) -> None:
        self.model = model
        self.mempool = mempool
        self.max_graphs = max_graphs
        self.graphs: OrderedDict[tuple, _DenseGraph] = OrderedDict()
        self.captures = 0
        self.replays = 0

    def key(self, batch: IterationBatch) -> tuple | None:
        """The graph key of a batch, or None when it is not exactly one dense lane."""
        a = batch.attention
        if a.n_reuse or a.cu_dense.numel() != 2:
            return None
        return (batch.input_ids.numel(),) + tuple(
            (f.name, _value_key(getattr(a, f.name))) for f in fields(a)
        )

    def forward(self, batch: IterationBatch, key: tuple) -> torch.Tensor:
        """The final hidden states [T, d]; valid until the next replay of any graph of the
        memory pool (the engine reads its LM-head rows first)."""
        g = self.graphs.get(key)
        if g is None:
            g = self._capture(key, batch)
        else:
            self.graphs.move_to_end(key)
            self._load(g, batch)
        g.graph.replay()
        self.replays += 1
        return g.hidden

    @staticmethod
    def _inputs(batch: IterationBatch) -> dict[str, torch.Tensor]:
        a = batch.attention
        out = {"input_ids": batch.input_ids, "positions": batch.positions}
        for f in fields(a):
            v = getattr(a, f.name)
            if isinstance(v, torch.Tensor):
                out[f.name] = v
        return out

    def _load(self, g: _DenseGraph, batch: IterationBatch) -> None:
        """Refresh the static buffers with this iteration's tensors (on the current stream)."""
        for name, t in self._inputs(batch).items():
            if t.numel():
                g.static[name].copy_(t)

    def _capture(self, key: tuple, batch: IterationBatch) -> _DenseGraph:
        while len(self.graphs) >= max(1, self.max_graphs):
            self.graphs.popitem(last=False)  # its memory goes back to the pool's free blocks
        static = {
            name: torch.empty(t.shape, dtype=t.dtype, device=t.device)
            for name, t in self._inputs(batch).items()
        }
        g = _DenseGraph(static, torch.cuda.CUDAGraph())
        self._load(g, batch)  # the warm-up run forwards this iteration's own inputs
        names = {f.name for f in fields(BatchAttention)}
        attention = replace(batch.attention, **{n: t for n, t in static.items() if n in names})
        g.hidden = capture(
            g.graph,
            self.mempool,
            lambda: self.model.forward(static["input_ids"], static["positions"], attention),
            f"batch-1 dense, {batch.input_ids.numel()} tokens, {len(self.graphs) + 1} kept",
        )
        self.graphs[key] = g
        self.captures += 1
        return g
