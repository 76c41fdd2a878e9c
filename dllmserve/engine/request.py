"""One request's generation state and its transitions: commit a step's tokens, end a block,
finish (docs/design.md §5).

The canvas is numpy on the host: the per-step bookkeeping is a few tiny ops per request, where
numpy costs ~1 us and a torch CPU op ~5 us.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from dllmserve.engine.inputs import ResolvedRequest
from dllmserve.engine.outputs import Provisional
from dllmserve.engine.schedule import BlockPlan, block_plan
from dllmserve.sparse.state import Phase, kept_count

if TYPE_CHECKING:
    from dllmserve.engine.constrained import RequestConstraint
    from dllmserve.engine.detokenizer import IncrementalDetokenizer


@dataclass(frozen=True)
class SpecialTokens:
    mask: int
    eos: int  # ends an answer; fills the canvas after an early stop (unless forbidden)
    eot: int | None  # ends a chat turn, where the tokenizer has one (<|eot_id|>, <|im_end|>)

    @cached_property
    def stop(self) -> frozenset[int]:
        """The tokens that end an answer."""
        return frozenset({self.eos} if self.eot is None else {self.eos, self.eot})


@dataclass
class StepResult:
    """What one step decided for one request."""

    block_index: int  # the block the step worked on
    phase: Phase  # what the step's forward did (FULL, SELECT or REUSE)
    positions: list[int]  # offsets into the generated canvas committed at this step
    token_ids: list[int]
    block_done: bool  # the step ended its block (also the last step, and an early stop)


class Request:
    """One request's generation state, built by the engine from its `ResolvedRequest`."""

    def __init__(
        self,
        request_id: str,
        prompt_ids: list[int],
        spec: ResolvedRequest,
        *,
        seed: int,
        tokens: SpecialTokens,
        shifted: bool,
        provisional: bool = False,
    ) -> None:
        self.request_id = request_id
        self.provisional = provisional  # its updates carry the steps' provisional tokens
        self.prompt_ids = prompt_ids
        self.spec = spec
        self.params = spec.params
        self.sparse = spec.sparse  # None: dense (the exact official algorithm)
        self.lanes = spec.lanes
        self.seed = seed
        self.tokens = tokens
        self.shifted = shifted  # Dream: a window also holds the position before the block
        self.prompt_len = len(prompt_ids)
        self.gen_length = spec.params.gen_length
        self.seq_len = self.prompt_len + self.gen_length
        self.canvas = np.full(self.seq_len, tokens.mask, dtype=np.int64)
        self.canvas[: self.prompt_len] = prompt_ids
        self.global_step = 0
        self.num_forward_passes = 0
        self.pages: list[list[list[int]]] = []  # [lane][layer] -> page ids
        self.page_tables: list[np.ndarray] = []  # [lane] -> int32 [layers, max pages], 0-padded
        self.arrival_time = time.monotonic()
        self.admit_time: float | None = None
        self.first_step_time: float | None = None
        self.finish_reason: str | None = None
        self.stable_len = 0  # committed generated tokens before the first mask
        self.answer_length: int | None = None  # offset of the first stop in the stable prefix
        self.detokenizer: IncrementalDetokenizer | None = None  # set by an engine with text
        self.constraint: RequestConstraint | None = None  # set for a structured output
        p = spec.params
        # Dream's `origin`: each mask committed independently, with the step's probability
        self.independent_commits = (
            p.schedule == "dream" and p.remasking == "origin" and p.threshold is None
        )
        self._start_block(0)

    # ---- schedule -------------------------------------------------------------------------
    def _start_block(self, index: int) -> None:
        self.block_idx = index
        self.step_in_block = 0
        s, e = self.spec.blocks[index]
        p = self.params
        steps = self.spec.block_steps[index]
        self._plan: BlockPlan = block_plan(
            p.schedule, e - s, steps, p.eps, independent=self.independent_commits
        )
        if self.sparse is not None:  # entries each KV head keeps: the candidates outside the window
            ws, we = self.window()
            self.kept = [kept_count(self.seq_len - (we - ws), r) for r in self.spec.layer_ratios]

    def commits_at(self, step_in_block: int) -> int:
        """Tokens the schedule commits at this step of the current block (0 past its plan)."""
        commits = self._plan.commits
        return commits[step_in_block] if step_in_block < len(commits) else 0

    def transfer_prob_at(self, step_in_block: int) -> float:
        """Dream's `origin`: each mask's probability of being committed at this step; NaN where
        the step commits `commits_at` tokens instead."""
        probs = self._plan.transfer_probs
        return probs[step_in_block] if probs and step_in_block < len(probs) else math.nan

    @property
    def fill_token(self) -> int:
        """What fills the canvas after an early stop: EOS, or the end-of-turn token when the
        request forbids EOS (`logits_eos_inf`; its answer can then only end with EOT)."""
        if self.params.logits_eos_inf and self.tokens.eot is not None:
            return self.tokens.eot
        return self.tokens.eos

    @property
    def total_steps(self) -> int:
        """Planned steps (an upper bound with a threshold)."""
        return self.params.max_steps

    @property
    def block_span(self) -> tuple[int, int]:
        """Sequence positions [start, end) of the current block."""
        s, e = self.spec.blocks[self.block_idx]
        return self.prompt_len + s, self.prompt_len + e

    def window(self) -> tuple[int, int]:
        """Positions forwarded in REUSE: the block, plus the position before it when shifted."""
        s, e = self.block_span
        return s - int(self.shifted), e

    @property
    def phase(self) -> Phase:
        if self.sparse is None:
            return Phase.FULL
        return self.sparse.phase(self.step_in_block)

    def next_step_planned(self) -> bool:
        """Whether the step after the one now running is planned without reading this one's
        tokens (the engine may chain it): REUSE without a threshold, the running step not the
        block's last."""
        return (
            self.phase == Phase.REUSE
            and self.params.threshold is None
            and self.step_in_block + 1 < self.spec.block_steps[self.block_idx]
        )

    # ---- pages ----------------------------------------------------------------------------
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
        un[: self.prompt_len] = self.tokens.mask
        return un

    @property
    def generated(self) -> np.ndarray:
        """The generated canvas (a view)."""
        return self.canvas[self.prompt_len :]

    @property
    def masked_left(self) -> int:
        return int((self.generated == self.tokens.mask).sum())

    def block_masked(self) -> int:
        s, e = self.block_span
        return int((self.canvas[s:e] == self.tokens.mask).sum())

    def provisional_tokens(self, x0: np.ndarray, confidence: np.ndarray) -> list[Provisional]:
        """The step's proposal (x0 and its confidence over the block's positions, before
        `commit_step` applies it) at each position of the block still masked."""
        bs, be = self.block_span
        offs = np.flatnonzero(self.canvas[bs:be] == self.tokens.mask)
        first = bs - self.prompt_len
        rows = zip(offs.tolist(), x0[offs].tolist(), confidence[offs].tolist(), strict=True)
        return [Provisional(first + o, t, c) for o, t, c in rows]

    # ---- transitions ----------------------------------------------------------------------
    def commit_step(self, x0: np.ndarray, commit: np.ndarray, now: float) -> StepResult:
        """Apply one step's sampled tokens (x0 and the commit mask over the block's positions),
        then end the block, stop early at EOS, or finish, as the step decides."""
        bs, be = self.block_span
        block, phase = self.block_idx, self.phase
        offs = np.flatnonzero(commit[: be - bs])
        tokens = x0[offs]
        self.canvas[bs + offs] = tokens
        positions = (offs + (bs - self.prompt_len)).tolist()
        token_ids = tokens.tolist()
        self.global_step += 1
        self.step_in_block += 1
        self.num_forward_passes += self.lanes
        if self.first_step_time is None:
            self.first_step_time = now
        self._grow_stable_prefix()
        if self.params.threshold is not None:
            block_done = self.block_masked() == 0
        else:
            block_done = self.step_in_block >= self.spec.block_steps[self.block_idx]
        if block_done:
            if self.params.stop_at_eos and self._answer_ended_before(be):
                rest = np.flatnonzero(self.canvas[be:] == self.tokens.mask) + be
                self.canvas[rest] = self.fill_token
                positions += (rest - self.prompt_len).tolist()
                token_ids += [self.fill_token] * len(rest)
                self._grow_stable_prefix()
                self.finish_reason = "stop"
            elif self.block_idx + 1 == len(self.spec.blocks):
                self.finish_reason = "stop" if self.answer_length is not None else "length"
            else:
                self._start_block(self.block_idx + 1)
        return StepResult(block, phase, positions, token_ids, block_done)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def _grow_stable_prefix(self) -> None:
        """Extend the stable prefix over newly committed tokens; note the first stop token."""
        gen, mask, stop = self.generated, self.tokens.mask, self.tokens.stop
        n = self.stable_len
        while n < self.gen_length and gen[n] != mask:
            if self.answer_length is None and gen[n] in stop:
                self.answer_length = n
            n += 1
        self.stable_len = n

    def _answer_ended_before(self, end: int) -> bool:
        """The canvas up to sequence position `end` holds the answer's stop token and only stop
        tokens after it (everything before `end` is committed at a block's end)."""
        if self.answer_length is None or self.prompt_len + self.answer_length >= end:
            return False
        tail = self.canvas[self.prompt_len + self.answer_length : end]
        return all(t in self.tokens.stop for t in tail.tolist())
