"""The device side of an iteration (docs/design.md §7): the K/V cache, the
CUDA graphs, building the packed inputs, launching the forward, the LM head and the sampler,
and the one copy of the results back to the host.
"""

from __future__ import annotations

import contextlib

import torch

from dllmserve.engine.batch import (
    IterationBatch,
    build_iteration,
    chain_iteration,
    refresh_iteration,
)
from dllmserve.engine.block_batch import (
    BlockIterationBatch,
    BlockSignature,
    block_signature,
    build_block_iteration,
    chain_block_iteration,
    refresh_block_iteration,
    same_lanes,
)
from dllmserve.engine.block_graphs import BlockGraphs
from dllmserve.engine.block_sampler import sample_block
from dllmserve.engine.dense_graphs import DenseGraphs
from dllmserve.engine.inflight import InFlight
from dllmserve.engine.kv_cache import KVCache
from dllmserve.engine.request import Request, SpecialTokens
from dllmserve.engine.reuse_graphs import ReuseGraphs
from dllmserve.engine.sampler import sample_scored
from dllmserve.models.transformer import DiffusionTransformer
from dllmserve.sparse.state import Phase


class ModelRunner:
    def __init__(
        self,
        model: DiffusionTransformer,
        cache: KVCache,
        tokens: SpecialTokens,
        *,
        use_graphs: bool,
        max_lanes: int,
    ) -> None:
        self.model = model
        self.cache = cache
        self.tokens = tokens
        # CUDA graphs for all-REUSE iterations and for batch-1 FULL / SELECT ones, in one pool
        self.graphs = ReuseGraphs(model, max_lanes) if use_graphs else None
        self.dense_graphs = DenseGraphs(model, self.graphs.mempool) if use_graphs else None
        # block-diffusion steps, those that store a finished block's K/V included
        self.block_graphs = None
        if use_graphs and model.cfg.block_diffusion:
            self.block_graphs = BlockGraphs(model, max_lanes, self.graphs.mempool)
        self._cached: tuple[tuple, IterationBatch] | None = None
        # block diffusion: the last iteration, when no lane of it stored K/V
        self._block_cached: tuple[BlockSignature, BlockIterationBatch] | None = None
        # False: every block-diffusion step rebuilds its batch (tests compare the two)
        self.refresh_blocks = True
        # False: no block-diffusion step is chained on the device (tests compare the two)
        self.chain_blocks = True

    def prepare(self, reqs: list[Request]) -> IterationBatch:
        """The iteration's inputs. Consecutive all-REUSE iterations of the same requests in
        the same blocks share every index tensor, so only the tokens and step counters are
        rebuilt and uploaded."""
        with profiled("dllm.prepare"):
            return self._prepare(reqs)

    def _prepare(self, reqs: list[Request]) -> IterationBatch:
        cfg = self.model.cfg
        if cfg.block_diffusion:  # block-causal lanes against the exact block K/V cache
            return self._prepare_blocks(reqs)
        signature = tuple((r.request_id, r.block_idx, r.phase) for r in reqs)
        all_reuse = all(r.phase == Phase.REUSE for r in reqs)
        if all_reuse and self._cached is not None and self._cached[0] == signature:
            batch = refresh_iteration(self._cached[1], reqs, self.model.device)
        else:
            batch = build_iteration(
                reqs, self.cache, cfg.n_layers, cfg.head_dim, self.model.dtype, self.model.device
            )
        self._cached = (signature, batch) if all_reuse else None
        return batch

    def _prepare_blocks(self, reqs: list[Request]) -> BlockIterationBatch:
        """A block-diffusion step. Mid-block, a step with the lanes of the one before (the same
        requests in the same order and blocks, neither step storing K/V: `same_lanes`) keeps
        that one's index tensors and uploads only the blocks' tokens and step counters
        (`refresh_block_iteration`); any other step is built whole and restarts the chain."""
        cfg = self.model.cfg
        key = block_signature(reqs)
        cached = self._block_cached
        if self.refresh_blocks and cached is not None and same_lanes(cached[0], key):
            batch = refresh_block_iteration(cached[1], reqs, self.model.device)
        else:
            batch = build_block_iteration(
                reqs,
                self.cache,
                cfg.n_layers,
                cfg.head_dim,
                self.cache.k.shape[1],
                self.model.device,
            )
        self._block_cached = (key, batch) if key is not None else None
        return batch

    def chainable(self, batch: IterationBatch) -> bool:
        """Whether the iteration after `batch` keeps its lanes, so that it can be built on the
        device (`chain`) where its requests plan it without its tokens: all-REUSE with no dense
        token, or a block-diffusion step that stores no block."""
        if isinstance(batch, BlockIterationBatch):
            return self.chain_blocks and not batch.stores_blocks
        return batch.reuse_window is not None and not batch.attention.n_dense_tokens

    def chain(self, prev: InFlight, reqs: list[Request]) -> IterationBatch:
        """The iteration after `prev`, built on the device from its sampled tokens."""
        dev = self.model.device
        with profiled("dllm.prepare"):
            if isinstance(prev.batch, BlockIterationBatch):
                return chain_block_iteration(prev.batch, prev.x0, prev.commit, reqs, dev)
            shifted = self.model.cfg.shifted_logits
            return chain_iteration(prev.batch, prev.x0, prev.commit, reqs, shifted, dev)

    def launch(self, reqs: list[Request], batch: IterationBatch) -> InFlight:
        """Queue the forward, the LM head, the sampler and the copy of the results to the host."""
        with profiled("dllm.launch", reqs):
            return self._launch(reqs, batch)

    def _launch(self, reqs: list[Request], batch: IterationBatch) -> InFlight:
        hidden = None
        for graphs in (self.block_graphs, self.graphs, self.dense_graphs):  # a replay or eager
            key = graphs.key(batch) if graphs is not None else None
            if key is not None:
                hidden = graphs.forward(batch, key)
                break
        if hidden is None:
            hidden = self.model.forward(batch.input_ids, batch.positions, batch.attention)
        R, B = batch.logit_rows.shape
        logits = self.model.logits(hidden[batch.logit_rows.view(-1)]).view(R, B, -1)
        if batch.uncond_rows is not None:
            un = self.model.logits(hidden[batch.uncond_rows.view(-1)]).view(R, B, -1)
            logits = un + (batch.cfg_scale[:, None, None] + 1) * (logits - un)
        t = self.tokens
        if isinstance(batch, BlockIterationBatch):
            x0, commit, confidence = sample_block(
                logits, batch.sampling, batch.block, t.mask, t.eos
            )
        else:
            x0, commit, confidence = sample_scored(logits, batch.sampling, t.eos, t.eot, t.mask)
        # the confidences go to the host only for an iteration where a request shows them
        wanted = any(r.provisional for r in reqs)
        return InFlight.start(reqs, batch, x0, commit, confidence if wanted else None)

    def graph_captures(self) -> int:
        """CUDA graphs captured so far (a capture inside a timed run would be timed)."""
        reuse = len(self.graphs.graphs) if self.graphs is not None else 0
        dense = self.dense_graphs.captures if self.dense_graphs is not None else 0
        return reuse + dense + (self.block_graphs.captures if self.block_graphs else 0)


def profiled(name: str, reqs: list[Request] | None = None) -> contextlib.AbstractContextManager:
    """A profiler range around the iteration's host work, named `name` (and, for a launch, the
    phase of its requests: "dllm.launch REUSE", MIXED when they differ), for
    benchmarks/timeline.py; free while no profiler runs."""
    if not torch.autograd._profiler_enabled():
        return contextlib.nullcontext()
    if reqs is not None:
        phases = {getattr(r, "phase", None) for r in reqs}
        phase = phases.pop() if len(phases) == 1 else None
        name += f" {phase.name if phase is not None else 'MIXED'}"
    return torch.profiler.record_function(name)
