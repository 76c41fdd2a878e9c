"""Build one iteration's packed inputs for block-diffusion requests (docs/design.md §15).

Each request forwards the blocks whose K/V it has not stored yet (the prompt's full blocks at
its first step, the block it just finished at the next one's first), each one lane whose K/V is
final, then its current block, one lane whose rows feed the LM head. Every lane is B tokens
attending to the request's cached entries before its start plus itself and storing its own K/V
(`BlockAttention`), so requests at any block and step share one forward, and a forward whose
lanes are all B tokens has the shape of a CUDA graph (`block_graphs`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from dllmserve.engine.batch import IterationBatch
from dllmserve.engine.block_attention import BlockAttention
from dllmserve.engine.block_request import BlockRequest
from dllmserve.engine.block_sampler import BlockSampling
from dllmserve.engine.constrained import ConstrainedRows, constrained_rows
from dllmserve.engine.kv_cache import KVCache
from dllmserve.engine.sampler import MODE_ID, SamplingBatch
from dllmserve.engine.upload import upload


@dataclass
class BlockIterationBatch(IterationBatch):
    block: BlockSampling | None = None
    lane_width: int | None = None  # B when every lane forwards B tokens (a graphable shape)

    @property
    def stores_blocks(self) -> bool:
        """Whether some lane forwards a finished block to store its K/V (more lanes than the
        requests' current blocks)."""
        return self.attention.n_reuse > self.logit_rows.shape[0]


@dataclass
class _Lanes:
    """Host-side lists of one iteration's lanes, filled request by request."""

    ids: list[np.ndarray]
    pos: list[np.ndarray]
    cu: list[int]
    kept: list[int]
    tables: list[np.ndarray]
    write_slots: list[np.ndarray]  # [layers, n] each

    def add(self, r: BlockRequest, start: int, end: int, page_size: int) -> int:
        """Append lane [start, end) of `r`; returns its first packed row."""
        row = self.cu[-1]
        self.ids.append(r.canvas[start:end])
        pos = np.arange(start, end)
        self.pos.append(pos)
        self.cu.append(row + end - start)
        self.kept.append(start)
        table = r.page_tables[0]
        self.tables.append(table)
        self.write_slots.append(table[:, pos // page_size] * page_size + pos % page_size)
        return row


def _lanes(reqs: list[BlockRequest], page_size: int) -> tuple[_Lanes, list[int]]:
    lanes = _Lanes([], [], [0], [], [], [])
    first_rows = []
    for r in reqs:
        for s, e in r.write_blocks():
            lanes.add(r, s, e, page_size)
        bs, be = r.block_span
        first_rows.append(lanes.add(r, bs, be, page_size))
    return lanes, first_rows


def _page_tables(tables: list[np.ndarray], n_layers: int) -> torch.Tensor:
    width = max(t.shape[1] for t in tables)
    out = np.zeros((n_layers, len(tables), width), dtype=np.int32)
    for j, t in enumerate(tables):
        out[:, j, : t.shape[1]] = t
    return torch.from_numpy(out)


def _spans(reqs: list[BlockRequest], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Each request's block start [R, 1] and which of the `width` columns its block fills."""
    spans = np.array([r.block_span for r in reqs], dtype=np.int64).reshape(len(reqs), 2)
    return spans[:, :1], np.arange(width) < spans[:, 1:] - spans[:, :1]


def _block_rows(reqs: list[BlockRequest], first_rows: list[int], width: int) -> dict:
    """The LM-head rows and the random stream's coordinates of each request's block: fixed
    while the requests and their lanes are (`refresh_block_iteration` keeps them)."""
    start, valid = _spans(reqs, width)
    col = np.arange(width)
    rows = np.where(valid, np.array(first_rows, dtype=np.int64)[:, None] + col, 0)
    positions = np.where(valid, start + col, 0)  # the random stream's coordinate: absolute
    return {"logit_rows": torch.from_numpy(rows), "gen_pos": torch.from_numpy(positions)}


def _block_state(reqs: list[BlockRequest], width: int) -> dict[str, torch.Tensor]:
    """What a step changes in each request's block: its tokens (`current`, 0 past a shorter
    block), its masks (`eligible`) and, with LLaDA2.1's edits, its committed generated
    positions (`editable`); `input_ids`, the blocks' tokens packed, when no lane stores K/V."""
    start, valid = _spans(reqs, width)
    current = np.zeros((len(reqs), width), dtype=np.int64)
    for i, r in enumerate(reqs):
        bs, be = r.block_span
        current[i, : be - bs] = r.canvas[bs:be]
    masks = np.array([[r.tokens.mask] for r in reqs], dtype=np.int64)
    eligible = valid & (current == masks)
    generated = start + np.arange(width) >= np.array([[r.prompt_len] for r in reqs])
    editing = np.array([[r.editing] for r in reqs], dtype=bool)
    t = torch.from_numpy
    return {
        "input_ids": t(current.reshape(-1) if valid.all() else current[valid]),
        "eligible": t(eligible),
        "editable": t(valid & ~eligible & generated & editing),
        "current": t(current),
    }


def _counters(reqs: list[BlockRequest]) -> dict[str, torch.Tensor]:
    """Each request's step counter (its random stream's) and the step's scheduled commits."""
    return {
        "step": torch.tensor([r.global_step for r in reqs], dtype=torch.long),
        "k": torch.tensor([r.commit_mask_k() for r in reqs], dtype=torch.long),
    }


def _settings(reqs: list[BlockRequest]) -> dict[str, torch.Tensor]:
    params = [r.params for r in reqs]
    nan = float("nan")
    return {
        "temperature": torch.tensor([p.temperature for p in params], dtype=torch.float64),
        "seed": torch.tensor([r.seed for r in reqs], dtype=torch.long),
        **_counters(reqs),
        "threshold": torch.tensor([nan if p.threshold is None else p.threshold for p in params]),
        "edit_threshold": torch.tensor(
            [nan if p.editing_threshold is None else p.editing_threshold for p in params]
        ),
        "top_k": torch.tensor([p.top_k or 0 for p in params], dtype=torch.long),
        "top_p": torch.tensor([1.0 if p.top_p is None else p.top_p for p in params]),
        "false": torch.zeros(len(reqs), dtype=torch.bool),
    }


def build_block_iteration(
    reqs: list[BlockRequest],
    cache: KVCache,
    n_layers: int,
    head_dim: int,
    page_size: int,
    device: torch.device,
) -> BlockIterationBatch:
    lanes, first_rows = _lanes(reqs, page_size)
    width = max(r.block_span[1] - r.block_span[0] for r in reqs)
    n_lanes = len(lanes.kept)
    widths = set(np.diff(lanes.cu).tolist())
    host = {
        **_block_state(reqs, width),  # its input_ids (the blocks alone) replaced by the lanes'
        "input_ids": torch.from_numpy(np.concatenate(lanes.ids)),
        "positions": torch.from_numpy(np.concatenate(lanes.pos)),
        "cu": torch.tensor(lanes.cu, dtype=torch.int32),
        "kept_len": torch.tensor(lanes.kept, dtype=torch.int32).expand(n_layers, n_lanes),
        "pages": _page_tables(lanes.tables, n_layers),
        "write_slots": torch.from_numpy(np.concatenate(lanes.write_slots, axis=1)).long(),
        **_block_rows(reqs, first_rows, width),
        **_settings(reqs),
    }
    d = upload({k: v.contiguous() for k, v in host.items()}, device)
    return BlockIterationBatch(
        input_ids=d["input_ids"],
        positions=d["positions"],
        attention=lanes_attention(d, cache, head_dim, n_layers, max(widths)),
        logit_rows=d["logit_rows"],
        uncond_rows=None,
        cfg_scale=None,
        sampling=_sampling(d, reqs, _constraint(reqs, width, device)),
        reuse_window=None,  # block lanes store K/V: `block_graphs`, not the REUSE graphs
        lane_width=min(widths) if len(widths) == 1 else None,
        block=BlockSampling(
            k=d["k"],
            edit_threshold=d["edit_threshold"],
            editable=d["editable"],
            current=d["current"],
        ),
    )


BlockSignature = tuple[tuple[BlockRequest, int, np.ndarray], ...]


def block_signature(reqs: list[BlockRequest]) -> BlockSignature | None:
    """What decides an iteration's lanes when none stores K/V (None when some request forwards
    a block to store it): each request, its block and its page table, in order."""
    if any(r.write_blocks() for r in reqs):
        return None
    return tuple((r, r.block_idx, r.page_tables[0]) for r in reqs)


def same_lanes(a: BlockSignature | None, b: BlockSignature | None) -> bool:
    """Whether two iterations have the same lanes, neither storing K/V: the same request
    objects in the same order, each in the same block with the same page-table array (a
    request re-admitted gets a new one from `set_pages`, which never edits one in place)."""
    if a is None or b is None or len(a) != len(b):
        return False
    return all(
        r is q and blk == qb and t is qt for (r, blk, t), (q, qb, qt) in zip(a, b, strict=True)
    )


def refresh_block_iteration(
    prev: BlockIterationBatch, reqs: list[BlockRequest], device: torch.device
) -> BlockIterationBatch:
    """`prev` for the next step of the same lanes (`same_lanes` of their signatures: the same
    requests in the same blocks and pages, no lane storing K/V in either step).

    Lanes, positions, page tables, write slots, cu lens, kept lengths, LM-head rows, the random
    stream's coordinates and every per-request setting depend only on those, so their device
    tensors are kept; what a step changes is uploaded: the blocks' tokens (`input_ids`,
    `current`), their masks (`eligible`), LLaDA2.1's `editable`, the step counters and the
    scheduled commits `k`; the structured outputs' rows are rebuilt (their blocks' committed
    tokens and settings, a small upload, only in a batch that has them). The result equals
    `build_block_iteration` of the same step, tensor for tensor (tests/test_block_refresh.py)."""
    width = prev.logit_rows.shape[1]
    host = {**_block_state(reqs, width), **_counters(reqs)}
    d = upload(host, device)
    sampling = replace(prev.sampling, step=d["step"], eligible=d["eligible"], k=d["k"])
    if prev.sampling.constraint is not None:
        sampling.constraint = _constraint(reqs, width, device)
    block = replace(prev.block, k=d["k"], editable=d["editable"], current=d["current"])
    return replace(prev, input_ids=d["input_ids"], sampling=sampling, block=block)


def chain_block_iteration(
    b: BlockIterationBatch,
    x0: torch.Tensor,
    commit: torch.Tensor,
    reqs: list[BlockRequest],
    device: torch.device,
) -> BlockIterationBatch:
    """The next step of batch `b`'s lanes (mid-block, none storing K/V, no edits), built on
    the device from its sampled tokens without reading them back: committed tokens replace
    the blocks' tokens (`current`, and `input_ids` through each position's LM-head row, which
    is its packed row), positions whose token changed leave `eligible` (a mask committed stays
    a mask), steps count up; only the scheduled commits come from the host. The result equals
    `refresh_block_iteration` of that step once `b`'s results are applied
    (tests/test_block_chain.py)."""
    current = torch.where(commit, x0, b.block.current)
    n = b.input_ids.numel()
    ids = torch.cat([b.input_ids, b.input_ids.new_zeros(1)])  # row n takes the uncommitted
    ids.scatter_(0, torch.where(commit, b.logit_rows, n).view(-1), x0.view(-1))
    ahead = torch.tensor([r.commit_mask_k(ahead=1) for r in reqs], dtype=torch.long)
    k = upload({"k": ahead}, device)["k"]
    eligible = b.sampling.eligible & (current == b.block.current)
    sampling = replace(b.sampling, step=b.sampling.step + 1, eligible=eligible, k=k)
    block = replace(b.block, k=k, current=current)
    return replace(b, input_ids=ids[:n], sampling=sampling, block=block)


def lanes_attention(
    d: dict[str, torch.Tensor], cache: KVCache, head_dim: int, n_layers: int, widest: int
) -> BlockAttention:
    """The `BlockAttention` of lanes given by the device tensors cu, kept_len, pages and
    write_slots (the widest lane `widest` tokens)."""
    none = torch.zeros(0, dtype=torch.int32, device=d["cu"].device)
    return BlockAttention(
        cache=cache,
        scale=head_dim**-0.5,
        n_dense_tokens=0,
        cu_dense=none[:0],
        max_dense=0,
        n_select=0,
        n_select_tokens=0,
        select_q_rows=none.long(),
        cu_win=none,
        win_start=none,
        win_len=none,
        n_keep=none.view(0, 0),
        max_keep=[0] * n_layers,
        head_select=none.bool(),
        pool_kernel=none,
        select_pages=none.view(n_layers, 0, 0),
        n_reuse=d["cu"].numel() - 1,
        cu_reuse=d["cu"],
        max_reuse=int(widest),
        kept_len=d["kept_len"],
        reuse_pages=d["pages"],
        write_slots=d["write_slots"],
    )


def _constraint(
    reqs: list[BlockRequest], width: int, device: torch.device
) -> ConstrainedRows | None:
    """The structured outputs' rows: each one's answer window of its block (the prompt's tail
    and the positions past gen_length stay free; docs/structured_outputs.md)."""
    return constrained_rows(reqs, width, device, block=True)


def _sampling(
    d: dict, reqs: list[BlockRequest], constraint: ConstrainedRows | None
) -> SamplingBatch:
    params = [r.params for r in reqs]
    return SamplingBatch(
        temperature=d["temperature"],
        seed=d["seed"],
        step=d["step"],
        positions=d["gen_pos"],
        eligible=d["eligible"],
        k=d["k"],
        transfer_prob=d["temperature"] * float("nan"),
        alg_temp=d["temperature"] * 0,
        threshold=d["threshold"],
        mode=torch.full_like(d["seed"], MODE_ID["maskgit_plus"]),
        top_k=d["top_k"],
        top_p=d["top_p"],
        logits_eos_inf=d["false"],
        conf_eos_eot_inf=d["false"],
        modes=frozenset({MODE_ID["maskgit_plus"]}),
        any_noise=any(p.temperature > 0 for p in params),
        any_threshold=any(p.threshold is not None for p in params),
        any_filter=any(p.top_k is not None or p.top_p is not None for p in params),
        any_alg_temp=False,
        any_transfer=False,
        constraint=constraint,
    )
