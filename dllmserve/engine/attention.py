"""The attention of one iteration's packed forward, for a batch mixing FULL, SELECT and REUSE.

Packed order: SELECT lanes, then FULL lanes (both whole sequences, dense varlen attention),
then REUSE lanes (their window only, against the kept K/V in the page pool). SELECT lanes also
pick and store each KV head's kept K/V per layer. The kernels behind it are
`dllmserve.kernels` (Triton on CUDA, PyTorch reference on the CPU); docs/design.md §10 has
the algorithm.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dllmserve import kernels
from dllmserve.engine.kv_cache import KVCache


@dataclass
class BatchAttention:
    cache: KVCache
    scale: float
    n_dense_tokens: int  # tokens of SELECT + FULL lanes: the packed prefix
    cu_dense: torch.Tensor  # int32 [n_dense_lanes + 1]
    max_dense: int
    # SELECT lanes (the first n_select dense lanes)
    n_select: int
    n_select_tokens: int
    select_q_rows: torch.Tensor  # int64 rows of the windows' queries in the packed batch
    cu_win: torch.Tensor
    win_start: torch.Tensor
    win_len: torch.Tensor
    n_keep: torch.Tensor  # int32 [layers, n_select]
    max_keep: list[int]  # per layer
    head_select: torch.Tensor  # bool [n_select]
    pool_kernel: torch.Tensor  # int32 [n_select]
    select_pages: torch.Tensor  # int32 [layers, n_select, max_pages]
    # REUSE lanes
    n_reuse: int
    cu_reuse: torch.Tensor
    max_reuse: int
    kept_len: torch.Tensor  # int32 [layers, n_reuse]
    reuse_pages: torch.Tensor  # int32 [layers, n_reuse, max_pages]

    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        nd = self.n_dense_tokens
        if self.n_reuse == 0:
            return kernels.varlen_attention(q, k, v, self.cu_dense, self.max_dense, self.scale)
        reuse = kernels.reuse_attention(
            q[nd:],
            k[nd:],
            v[nd:],
            self.cu_reuse,
            self.max_reuse,
            self.cache.k,
            self.cache.v,
            self.reuse_pages[layer],
            self.kept_len[layer],
            self.scale,
        )
        if nd == 0:  # all REUSE (every block-diffusion step): no copy into a packed output
            return reuse
        out = torch.empty_like(q)
        out[:nd] = kernels.varlen_attention(
            q[:nd], k[:nd], v[:nd], self.cu_dense, self.max_dense, self.scale
        )
        out[nd:] = reuse
        return out

    def kv_target(self, layer: int) -> None:
        """Dense and REUSE lanes write no K/V of their own (SELECT's kept K/V: `select`)."""
        return None

    def select(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store the kept K/V of the SELECT lanes for this layer (called before attending)."""
        if self.n_select == 0:
            return
        ns = self.n_select_tokens
        kernels.select_and_store(
            kernels.SelectionArgs(
                q_win=q[self.select_q_rows],
                cu_win=self.cu_win,
                k_seq=k[:ns],
                v_seq=v[:ns],
                cu_seq=self.cu_dense[: self.n_select + 1],
                win_start=self.win_start,
                win_len=self.win_len,
                n_keep=self.n_keep[layer],
                head_select=self.head_select,
                pool_kernel=self.pool_kernel,
                k_pool=self.cache.k,
                v_pool=self.cache.v,
                page_table=self.select_pages[layer],
                scale=self.scale,
                max_keep=self.max_keep[layer],
            )
        )
