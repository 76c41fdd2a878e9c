"""What one SELECT launch of one layer works on (docs/design.md §10).

One keyword-only object instead of fifteen positional arguments: the dispatcher, the Triton
launcher (`selection.select_and_store`) and the reference (`reference.select_and_store`) take
it alike, and a call site names every field. R is the number of SELECT lanes, W the total
window length; index tensors are int32 on the tensors' device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, kw_only=True)
class SelectionArgs:
    q_win: torch.Tensor  # [W, H, D] post-RoPE queries of every lane's window, packed
    cu_win: torch.Tensor  # [R + 1] offsets of each lane's window rows in q_win
    k_seq: torch.Tensor  # [T, Hkv, D] post-RoPE keys of every lane's whole sequence, packed
    v_seq: torch.Tensor  # [T, Hkv, D] values, same rows
    cu_seq: torch.Tensor  # [R + 1] offsets of each lane's sequence in k_seq / v_seq
    win_start: torch.Tensor  # [R] window start (a sequence position) per lane
    win_len: torch.Tensor  # [R] window length per lane: the candidates are the rest
    n_keep: torch.Tensor  # [R] entries each KV head keeps (min(max(1, N_c r), N_c), or 0)
    head_select: torch.Tensor  # [R] bool: score per KV head (else one score for all heads)
    pool_kernel: torch.Tensor  # [R] odd max-pool width along the candidates
    k_pool: torch.Tensor  # [pages, page_size, Hkv, D] the cache's keys (written)
    v_pool: torch.Tensor  # [pages, page_size, Hkv, D] the cache's values (written)
    page_table: torch.Tensor  # [R, max_pages] each lane's pages of this layer, in entry order
    scale: float  # 1 / sqrt(D)
    max_keep: int  # max(n_keep): the width of the returned positions
