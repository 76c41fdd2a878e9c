"""Block-causal attention of one packed forward over block-diffusion lanes (docs/design.md §15).

Every lane is one block of one request: its queries attend to the request's cached K/V of every
earlier block (entries 0 .. block start of its pages, entry j being position j) followed by the
block's own fresh K/V, bidirectionally: exactly `kernels.reuse_attention` with the kept length
set to the block's start. Lanes that finish a block's K/V (the prompt's full blocks at the first
step, a block just denoised at the next one's first) store it in the pages before anyone
attends in that layer, so a later lane of the same forward already reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dllmserve.engine.attention import BatchAttention


@dataclass
class BlockAttention(BatchAttention):
    write_rows: torch.Tensor | None = None  # int64 [N]: packed rows whose K/V are final
    write_slots: torch.Tensor | None = None  # int64 [layers, N]: page * page_size + entry

    def select(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store the final K/V of this layer (called before attending)."""
        if self.write_rows is None or self.write_rows.numel() == 0:
            return
        slots = self.write_slots[layer]
        kp = self.cache.k.view(-1, *self.cache.k.shape[2:])
        vp = self.cache.v.view(-1, *self.cache.v.shape[2:])
        kp[slots] = k[self.write_rows]
        vp[slots] = v[self.write_rows]
