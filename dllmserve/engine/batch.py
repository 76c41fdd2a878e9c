"""Build one iteration's packed inputs from the running requests.

All per-request work here is host-side list building; what reaches the device is uploaded in
two asynchronous copies (`upload`), so the forward and the sampler run over the whole batch at
once and the host never waits for the GPU before the step's one device-to-host copy.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from dllmserve.engine.attention import BatchAttention
from dllmserve.engine.constrained import constrained_rows
from dllmserve.engine.kv_cache import KVCache
from dllmserve.engine.request import Request
from dllmserve.engine.sampler import MODE_ID, SamplingBatch
from dllmserve.engine.upload import upload
from dllmserve.sparse.state import Phase


@dataclass
class IterationBatch:
    input_ids: torch.Tensor  # [T] packed tokens
    positions: torch.Tensor  # [T]
    attention: BatchAttention
    logit_rows: torch.Tensor  # [R, B] packed rows whose hidden state predicts each block position
    uncond_rows: torch.Tensor | None  # [R, B] rows of the cfg lane (own rows where no cfg)
    cfg_scale: torch.Tensor | None  # [R] model dtype, 0 where no cfg
    sampling: SamplingBatch
    reuse_window: int | None  # W when every REUSE lane forwards W tokens (a graphable shape)


def _page_tables(lanes: list[tuple[Request, int]], n_layers: int) -> torch.Tensor:
    """int32 [layers, lanes, max_pages], unused slots 0 (never read: kept counts bound them)."""
    width = max((r.page_tables[ln].shape[1] for r, ln in lanes), default=1)
    t = np.zeros((n_layers, len(lanes), width), dtype=np.int32)
    for j, (r, ln) in enumerate(lanes):
        table = r.page_tables[ln]
        t[:, j, : table.shape[1]] = table
    return torch.from_numpy(t)


def build_iteration(
    reqs: list[Request],
    cache: KVCache,
    n_layers: int,
    head_dim: int,
    dtype: torch.dtype,
    device: torch.device,
) -> IterationBatch:
    select, full, reuse = _lanes_by_phase(reqs)
    pk = _pack(select, full, reuse)
    sel = _select_meta(select, reuse, pk, n_layers)
    width = max(r.block_span[1] - r.block_span[0] for r in reqs)
    params = [r.params for r in reqs]
    host = {
        "input_ids": torch.cat(pk.ids),
        "positions": torch.cat(pk.pos),
        "cu_dense": torch.tensor(pk.cu_dense, dtype=torch.int32),
        **sel.host,
        "select_pages": _page_tables(select, n_layers),
        "cu_reuse": torch.tensor(pk.cu_reuse, dtype=torch.int32),
        "kept_len": torch.tensor(sel.kept_len, dtype=torch.int32).view(n_layers, len(reuse)),
        "reuse_pages": _page_tables(reuse, n_layers),
        **_row_tensors(reqs, pk, width),
        **_sampling_tensors(reqs, params, dtype),
    }
    d = upload(host, device)
    any_cfg = any(r.lanes == 2 for r in reqs)
    reuse_widths = {b - a for a, b in zip(pk.cu_reuse, pk.cu_reuse[1:], strict=False)}
    return IterationBatch(
        input_ids=d["input_ids"],
        positions=d["positions"],
        attention=_attention(d, cache, head_dim, pk, sel, select, full, reuse, reuse_widths),
        logit_rows=d["logit_rows"],
        uncond_rows=d["uncond_rows"] if any_cfg else None,
        cfg_scale=d["cfg_scale"] if any_cfg else None,
        sampling=_sampling_batch(d, reqs, params, width, device),
        reuse_window=reuse_widths.pop() if len(reuse_widths) == 1 else None,
    )


Lanes = list[tuple[Request, int]]


def _lanes_by_phase(reqs: list[Request]) -> tuple[Lanes, Lanes, Lanes]:
    """Every (request, lane) by its phase: SELECT, FULL, REUSE."""
    select: Lanes = []
    full: Lanes = []
    reuse: Lanes = []
    for r in reqs:
        ph = r.phase
        bucket = select if ph == Phase.SELECT else full if ph == Phase.FULL else reuse
        bucket.extend((r, lane) for lane in range(r.lanes))
    return select, full, reuse


@dataclass
class _Packed:
    """The lanes' tokens packed in one sequence: SELECT and FULL lanes whole, then the REUSE
    lanes' windows."""

    ids: list[torch.Tensor]
    pos: list[torch.Tensor]
    offset: dict[tuple[str, int], int]  # (request, lane) -> packed row of position `base`
    base: dict[str, int]
    cu_dense: list[int]
    cu_reuse: list[int]
    n_dense: int


def _pack(select: Lanes, full: Lanes, reuse: Lanes) -> _Packed:
    pk = _Packed([], [], {}, {}, [0], [0], 0)
    t = 0
    for r, lane in select + full:
        pk.ids.append(torch.from_numpy(r.lane_tokens(lane)))
        pk.pos.append(torch.arange(r.seq_len))
        pk.offset[(r.request_id, lane)] = t
        pk.base[r.request_id] = 0
        t += r.seq_len
        pk.cu_dense.append(t)
    pk.n_dense = t
    for r, lane in reuse:
        ws, we = r.window()
        pk.ids.append(torch.from_numpy(r.lane_tokens(lane)[ws:we]))
        pk.pos.append(torch.arange(ws, we))
        pk.offset[(r.request_id, lane)] = t
        pk.base[r.request_id] = ws
        t += we - ws
        pk.cu_reuse.append(t - pk.n_dense)
    return pk


@dataclass
class _SelectMeta:
    host: dict[str, torch.Tensor]  # the SELECT lanes' tensors
    n_keep: list[list[int]]  # [layer][select lane] entries each head keeps
    kept_len: list[list[int]]  # [layer][reuse lane] entries each head kept


def _select_meta(select: Lanes, reuse: Lanes, pk: _Packed, n_layers: int) -> _SelectMeta:
    i32 = torch.int32
    q_rows: list[torch.Tensor] = [torch.zeros(0, dtype=torch.long)]
    cu_win, win_start, win_len = [0], [], []
    for r, lane in select:
        ws, we = r.window()
        q_rows.append(torch.arange(ws, we) + pk.offset[(r.request_id, lane)])
        win_start.append(ws)
        win_len.append(we - ws)
        cu_win.append(cu_win[-1] + we - ws)
    sel_kept = [r.kept for r, _ in select]
    reuse_kept = [r.kept for r, _ in reuse]
    n_keep = [[k[i] for k in sel_kept] for i in range(n_layers)]
    kept_len = [[k[i] for k in reuse_kept] for i in range(n_layers)]
    sparse_sel = [r.sparse for r, _ in select]
    host = {
        "select_q_rows": torch.cat(q_rows),
        "cu_win": torch.tensor(cu_win, dtype=i32),
        "win_start": torch.tensor(win_start, dtype=i32),
        "win_len": torch.tensor(win_len, dtype=i32),
        "n_keep": torch.tensor(n_keep, dtype=i32).view(n_layers, len(select)),
        "head_select": torch.tensor([s.head_select for s in sparse_sel], dtype=torch.bool),
        "pool_kernel": torch.tensor([s.pool_kernel for s in sparse_sel], dtype=i32),
    }
    return _SelectMeta(host, n_keep, kept_len)


def _row_tensors(reqs: list[Request], pk: _Packed, width: int) -> dict[str, torch.Tensor]:
    """LM-head rows and block positions, one row per request."""
    R = len(reqs)
    rows = torch.zeros((R, width), dtype=torch.long)
    un_rows = torch.zeros((R, width), dtype=torch.long)
    gen_pos = torch.zeros((R, width), dtype=torch.long)
    eligible = torch.zeros((R, width), dtype=torch.bool)
    for i, r in enumerate(reqs):
        bs, be = r.block_span
        n = be - bs
        p = torch.arange(bs, be)
        src = p - int(r.shifted) - pk.base[r.request_id]  # shifted: position p reads row p-1
        rows[i, :n] = src + pk.offset[(r.request_id, 0)]
        un_rows[i, :n] = src + pk.offset[(r.request_id, r.lanes - 1)]
        gen_pos[i, :n] = p - r.prompt_len
        eligible[i, :n] = torch.from_numpy(r.canvas[bs:be] == r.tokens.mask)
    return {"logit_rows": rows, "uncond_rows": un_rows, "gen_pos": gen_pos, "eligible": eligible}


def _sampling_tensors(reqs: list[Request], params: list, dtype: torch.dtype) -> dict:
    """The per-request sampling settings, one entry per request."""
    i64 = torch.long
    return {
        "temperature": torch.tensor([p.temperature for p in params], dtype=torch.float64),
        "seed": torch.tensor([r.seed for r in reqs], dtype=i64),
        "step": torch.tensor([r.global_step for r in reqs], dtype=i64),
        **_plan_tensors(reqs, 0),
        "alg_temp": torch.tensor([p.alg_temp for p in params], dtype=torch.float64),
        "threshold": torch.tensor(
            [float("nan") if p.threshold is None else p.threshold for p in params]
        ),
        "mode": torch.tensor([MODE_ID[p.remasking] for p in params], dtype=i64),
        "top_k": torch.tensor([p.top_k or 0 for p in params], dtype=i64),
        "top_p": torch.tensor([1.0 if p.top_p is None else p.top_p for p in params]),
        "logits_eos_inf": torch.tensor([p.logits_eos_inf for p in params]),
        "conf_eos_eot_inf": torch.tensor([p.confidence_eos_eot_inf for p in params]),
        "cfg_scale": torch.tensor([p.cfg_scale for p in params], dtype=dtype),
    }


def _attention(
    d: dict, cache: KVCache, head_dim: int, pk: _Packed, sel: _SelectMeta, select: Lanes,
    full: Lanes, reuse: Lanes, reuse_widths: set[int],
) -> BatchAttention:  # fmt: skip
    return BatchAttention(
        cache=cache,
        scale=head_dim**-0.5,
        n_dense_tokens=pk.n_dense,
        cu_dense=d["cu_dense"],
        max_dense=max((r.seq_len for r, _ in select + full), default=0),
        n_select=len(select),
        n_select_tokens=pk.cu_dense[len(select)],
        select_q_rows=d["select_q_rows"],
        cu_win=d["cu_win"],
        win_start=d["win_start"],
        win_len=d["win_len"],
        n_keep=d["n_keep"],
        max_keep=[max(row, default=0) for row in sel.n_keep],
        head_select=d["head_select"],
        pool_kernel=d["pool_kernel"],
        select_pages=d["select_pages"],
        n_reuse=len(reuse),
        cu_reuse=d["cu_reuse"],
        max_reuse=max(reuse_widths, default=0),
        kept_len=d["kept_len"],
        reuse_pages=d["reuse_pages"],
    )


def _sampling_batch(
    d: dict, reqs: list[Request], params: list, width: int, device: torch.device
) -> SamplingBatch:
    return SamplingBatch(
        temperature=d["temperature"],
        seed=d["seed"],
        step=d["step"],
        positions=d["gen_pos"],
        eligible=d["eligible"],
        k=d["k"],
        transfer_prob=d["transfer_prob"],
        alg_temp=d["alg_temp"],
        threshold=d["threshold"],
        mode=d["mode"],
        top_k=d["top_k"],
        top_p=d["top_p"],
        logits_eos_inf=d["logits_eos_inf"],
        conf_eos_eot_inf=d["conf_eos_eot_inf"],
        modes=frozenset(MODE_ID[p.remasking] for p in params),
        any_noise=any(p.temperature > 0 for p in params),
        any_threshold=any(p.threshold is not None for p in params),
        any_filter=any(p.top_k is not None or p.top_p is not None for p in params),
        any_alg_temp=any(p.alg_temp > 0 for p in params),
        any_transfer=any(r.independent_commits for r in reqs),
        constraint=constrained_rows(reqs, width, device),
    )


def refresh_iteration(
    prev: IterationBatch, reqs: list[Request], device: torch.device
) -> IterationBatch:
    """`prev` for the next step of the same all-REUSE requests: new window tokens, masks,
    step counters and commit plans; every index tensor stays as it is on the device."""
    windows = []
    for r in reqs:
        ws, we = r.window()
        windows.extend(torch.from_numpy(r.lane_tokens(lane)[ws:we]) for lane in range(r.lanes))
    eligible = torch.zeros(prev.logit_rows.shape, dtype=torch.bool)
    for i, r in enumerate(reqs):
        bs, be = r.block_span
        eligible[i, : be - bs] = torch.from_numpy(r.canvas[bs:be] == r.tokens.mask)
    host = {
        "input_ids": torch.cat(windows),
        "eligible": eligible,
        "step": torch.tensor([r.global_step for r in reqs], dtype=torch.long),
        **_plan_tensors(reqs, 0),
    }
    d = upload(host, device)
    sampling = replace(
        prev.sampling,
        eligible=d["eligible"],
        step=d["step"],
        k=d["k"],
        transfer_prob=d["transfer_prob"],
    )
    return replace(prev, input_ids=d["input_ids"], sampling=sampling)


def chain_iteration(
    b: IterationBatch,
    x0: torch.Tensor,
    commit: torch.Tensor,
    reqs: list[Request],
    shifted: bool,
    device: torch.device,
) -> IterationBatch:
    """The next all-REUSE iteration of batch `b`'s requests, built on the device from its
    sampled tokens (x0, commit) without reading them back: committed tokens are scattered into
    the window tokens (of both cfg lanes), committed positions leave `eligible`, steps count up.
    Only the next commit plans come from the host (no schedule depends on tokens: Dream's
    `origin` draws its commits on the device, from a probability fixed by the step)."""
    ids = b.input_ids
    T = ids.numel()
    buf = torch.cat([ids, ids.new_zeros(1)])  # slot T takes the writes of uncommitted entries
    for rows in (b.logit_rows, b.uncond_rows):
        if rows is not None:
            target = torch.where(commit, rows + int(shifted), T)
            buf.scatter_(0, target.view(-1), x0.view(-1))
    plan = upload(_plan_tensors(reqs, 1), device)
    sampling = replace(
        b.sampling,
        eligible=b.sampling.eligible & ~commit,
        step=b.sampling.step + 1,
        k=plan["k"],
        transfer_prob=plan["transfer_prob"],
    )
    return replace(b, input_ids=buf[:T], sampling=sampling)


def _plan_tensors(reqs: list[Request], ahead: int) -> dict[str, torch.Tensor]:
    """Each request's commit count and transfer probability `ahead` steps past its current one."""
    return {
        "k": torch.tensor([r.commits_at(r.step_in_block + ahead) for r in reqs], dtype=torch.long),
        "transfer_prob": torch.tensor(
            [r.transfer_prob_at(r.step_in_block + ahead) for r in reqs], dtype=torch.float64
        ),
    }
