"""One request's generation state: its canvas, where it is in its blocks, and its cache pages."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from dllmserve.engine.schedule import block_bounds, even_split, transfer_counts
from dllmserve.sampling_params import SamplingParams
from dllmserve.sparse.state import Phase, SparseConfig, kept_count


@dataclass
class Request:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    sparse: SparseConfig | None  # None: dense (the exact official algorithm)
    seed: int
    block_length: int
    mask_id: int
    shifted: bool  # Dream: a window also holds the position before the block
    layer_ratios: list[float]
    arrival_time: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        p = self.params
        self.P = len(self.prompt_ids)
        self.G = p.gen_length
        self.L = self.P + self.G
        self.blocks = block_bounds(self.G, self.block_length)
        self.block_steps = even_split(p.steps, len(self.blocks))
        # numpy on the host: the per-step bookkeeping is a few tiny ops per request, where
        # numpy costs ~1 us and a torch CPU op ~5 us
        self.canvas = np.full(self.L, self.mask_id, dtype=np.int64)
        self.canvas[: self.P] = self.prompt_ids
        self.lanes = 2 if p.cfg_scale > 0 else 1
        self.block_idx = 0
        self.step_in_block = 0
        self.global_step = 0
        self.num_forward_passes = 0
        self.pages: list[list[list[int]]] = []  # [lane][layer] -> page ids
        self.page_tables: list[np.ndarray] = []  # [lane] -> int32 [layers, max pages], 0-padded
        self.admit_time: float | None = None
        self.first_step_time: float | None = None
        self.finish_reason: str | None = None
        self._plan_block()

    # ---- schedule -------------------------------------------------------------------------
    def _plan_block(self) -> None:
        s, e = self.blocks[self.block_idx]
        self.transfer = transfer_counts(e - s, self.block_steps[self.block_idx])

    def next_block(self) -> None:
        self.block_idx += 1
        self.step_in_block = 0
        self._plan_block()

    @property
    def total_steps(self) -> int:
        """Planned steps (an upper bound with a threshold)."""
        return self.params.max_steps

    @property
    def block_span(self) -> tuple[int, int]:
        """Sequence positions [start, end) of the current block."""
        s, e = self.blocks[self.block_idx]
        return self.P + s, self.P + e

    def window(self, block_idx: int | None = None) -> tuple[int, int]:
        """Positions forwarded in REUSE: the block, plus the position before it when shifted."""
        s, e = self.blocks[self.block_idx if block_idx is None else block_idx]
        return self.P + s - int(self.shifted), self.P + e

    @property
    def phase(self) -> Phase:
        if self.sparse is None:
            return Phase.FULL
        return self.sparse.phase(self.step_in_block)

    def scheduled_transfer(self) -> int:
        if self.step_in_block < len(self.transfer):
            return self.transfer[self.step_in_block]
        return 0

    def kept_counts(self, block_idx: int | None = None) -> list[int]:
        """Entries each KV head keeps per layer for a block (its candidates: all but the window)."""
        ws, we = self.window(block_idx)
        n_c = self.L - (we - ws)
        return [kept_count(n_c, r) for r in self.layer_ratios]

    def max_kept_counts(self) -> list[int]:
        per_block = [self.kept_counts(b) for b in range(len(self.blocks))]
        return [max(col) for col in zip(*per_block, strict=True)]

    def set_pages(self, pages: list[list[list[int]]]) -> None:
        """Take the pages reserved at admission ([lane][layer] -> ids) and their tables."""
        self.pages = pages
        self.page_tables = []
        for lane in pages:
            width = max((len(p) for p in lane), default=0)
            table = np.zeros((len(lane), max(width, 1)), dtype=np.int32)
            for i, p in enumerate(lane):
                table[i, : len(p)] = p
            self.page_tables.append(table)

    # ---- tokens ---------------------------------------------------------------------------
    def lane_tokens(self, lane: int) -> np.ndarray:
        """The canvas as lane `lane` sees it; the cfg lane has every prompt position masked."""
        if lane == 0:
            return self.canvas
        un = self.canvas.copy()
        un[: self.P] = self.mask_id
        return un

    @property
    def masked_left(self) -> int:
        return int((self.canvas[self.P :] == self.mask_id).sum())

    def block_masked(self) -> int:
        s, e = self.block_span
        return int((self.canvas[s:e] == self.mask_id).sum())
