"""Block-causal attention of one packed forward over block-diffusion lanes (docs/design.md §15).

Every lane is one block of one request: its queries attend to the request's cached K/V of every
earlier block (entries 0 .. block start of its pages, entry j being position j) followed by the
block's own fresh K/V, bidirectionally: exactly `kernels.reuse_attention` with the kept length
set to the block's start. Every lane stores its K/V at its positions in the pages before anyone
attends in that layer (`kv_target`: the RoPE launch writes them): for the blocks whose K/V is
final (the prompt's full blocks at the first step, a block just denoised at the next one's
first) that is the cache entry, read by a later lane of the same forward already; a block still
being denoised stores provisional K/V at entries nobody reads (attention reads entries below a
block's start only) and that its final forward overwrites. Storing every row gives each step
one shape whatever its blocks, so the steps that finish a block replay CUDA graphs too
(`block_graphs`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dllmserve.engine.attention import BatchAttention
from dllmserve.models.layers import KVTarget


@dataclass
class BlockAttention(BatchAttention):
    write_slots: torch.Tensor | None = None  # int64 [layers, T]: page * page_size + entry

    def kv_target(self, layer: int) -> KVTarget:
        """Every packed row's K/V goes to its cache entry, written with RoPE before attending."""
        return self.cache.k, self.cache.v, self.write_slots[layer]
