"""A block-diffusion (LLaDA2) request: blocks aligned to absolute positions from 0, an exact
K/V cache of its finished blocks, LLaDA2.0's commit rule and LLaDA2.1's edits
(docs/design.md §15).

The canvas runs to the end of the last block, ceil((P + G) / B) · B positions: the prompt's
tail sits in the first denoised block and the positions past P + G in the last block are
denoised too, as the official `generate` does. `kv_upto` is how far the request's pages hold
final K/V: each iteration forwards the blocks in [kv_upto, current block) once, writing their
K/V (the prompt's full blocks at the first step, a finished block at the next block's first),
then the current block against everything before it.
"""

from __future__ import annotations

import numpy as np

from dllmserve.engine.outputs import Edit
from dllmserve.engine.prefix_cache import Entry, PrefixCache, block_hashes
from dllmserve.engine.request import Request, StepResult
from dllmserve.sampling_params import MAX_POST_STEPS


class BlockRequest(Request):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seq_len = self.prompt_len + self.spec.blocks[-1][1]
        self.canvas = np.full(self.seq_len, self.tokens.mask, dtype=np.int64)
        self.canvas[: self.prompt_len] = self.prompt_ids
        self.editing = self.params.editing_threshold is not None
        self.kv_upto = 0  # positions [0, kv_upto) have their final K/V in the pages
        # the official code's cost: every step forwards the canvas from position 0 again
        # (benchmarks/offline.py's baseline; the tokens are the same)
        self.recompute_prefix = False
        self.post_steps = 0  # LLaDA2.1: steps of this block that began with no mask
        self.edits: list[Edit] = []  # what the last step edited
        # prefix caching: the chained hashes of the prompt's full blocks, the cached entries
        # this request holds, and whether its own stored blocks were offered to the cache
        self.prefix_keys = block_hashes(self.prompt_ids, self.spec.block_length)
        self.prefix_entries: list[Entry] = []
        self.prefix_adopted = False

    def use_cached_prefix(self, entries: list[Entry]) -> None:
        """Admitted with these cached prompt blocks in its pages: no prefill for them."""
        self.prefix_entries = list(entries)
        self.kv_upto = len(entries) * self.spec.block_length

    def adopt_prefix(self, cache: PrefixCache) -> None:
        """Once its full prompt blocks are stored, offer their pages to the cache."""
        b = self.spec.block_length
        if self.kv_upto < len(self.prefix_keys) * b:
            return
        per = b // cache.page_size
        for i in range(len(self.prefix_entries), len(self.prefix_keys)):
            pages = [layer[i * per : (i + 1) * per] for layer in self.pages[0]]
            entry = cache.adopt(self.prefix_keys[i], pages)
            if entry is not None:
                self.prefix_entries.append(entry)
        self.prefix_adopted = True

    @property
    def generated(self) -> np.ndarray:
        """The generated canvas (a view): gen_length tokens, not the last block's tail."""
        return self.canvas[self.prompt_len : self.prompt_len + self.gen_length]

    @property
    def total_steps(self) -> int:
        """Planned steps: steps per block x blocks (an upper bound with edits)."""
        per_block = self.spec.block_steps[0]
        if self.editing:  # a mask a step (at least), then up to 16 steps that only edit
            per_block = self.spec.block_length + MAX_POST_STEPS + 1
        return per_block * len(self.spec.blocks)

    def write_blocks(self) -> list[tuple[int, int]]:
        """[start, end) of the blocks this step forwards to store their final K/V."""
        bs, _ = self.block_span
        b = self.spec.block_length
        return [(s, s + b) for s in range(self.kv_upto, bs, b)]

    def next_step_planned(self) -> bool:
        """Whether the step after the one now running is this block's next with a commit count
        known now: no threshold, edit or early stop (the tokens decide those), the running step
        not the block's last by its schedule, and masks left after it (a step commits at most
        its scheduled count; a mask committed stays a mask). A structured output may chain: its
        DP picks which tokens, not how many, and its committed tokens follow on the device
        (`ConstrainedRows.observe`)."""
        p = self.params
        if p.threshold is not None or self.editing or p.eos_early_stop or self.recompute_prefix:
            return False
        last = self.step_in_block + 1 >= self.spec.block_steps[0]
        return not last and self.block_masked() > self.commit_mask_k()

    def commit_mask_k(self, ahead: int = 0) -> int:
        """The scheduled commit count of the step `ahead` steps past the current one (LLaDA2.1:
        one)."""
        return 1 if self.editing else self.commits_at(self.step_in_block + ahead)

    def provisional_tokens(self, x0: np.ndarray, confidence: np.ndarray):
        return [p for p in super().provisional_tokens(x0, confidence) if p[0] < self.gen_length]

    def commit_step(self, x0: np.ndarray, commit: np.ndarray, now: float) -> StepResult:
        """Apply a step: new tokens at masks, LLaDA2.1's edits elsewhere; end the block when it
        has no mask (LLaDA2.1: when a step began with none and edited nothing, or after 16
        such steps), stop at an EOS (`stop_at_eos` after the block, `eos_early_stop` once the
        answer's EOS and everything before it are committed), or finish."""
        bs, be = self.block_span
        block, phase = self.block_idx, self.phase
        # this step's forward stored every block before the current one
        self.kv_upto = 0 if self.recompute_prefix else bs
        window = self.canvas[bs:be]
        was_mask = window == self.tokens.mask
        offs = np.flatnonzero(commit[: be - bs])
        old, new = window[offs].copy(), x0[offs]
        edited = ~was_mask[offs]
        gen_off = offs + (bs - self.prompt_len)
        self.edits = [
            Edit(int(p), int(o), int(n))
            for p, o, n in zip(gen_off[edited], old[edited], new[edited], strict=True)
            if p < self.gen_length
        ]
        window[offs] = new
        keep = gen_off < self.gen_length
        positions, token_ids = gen_off[keep].tolist(), new[keep].tolist()
        self.global_step += 1
        self.step_in_block += 1
        self.num_forward_passes += 1
        if self.first_step_time is None:
            self.first_step_time = now
        had_masks = bool(was_mask.any())
        if not had_masks:
            self.post_steps += 1
        block_done = self._block_done(had_masks, bool(edited.any()))
        self._grow_stable_prefix(be if block_done else bs)
        early = self.params.eos_early_stop and self.answer_length is not None
        if block_done or early:
            last = self.block_idx + 1 == len(self.spec.blocks)
            if (self.params.stop_at_eos or early or last) and self.answer_length is not None:
                self.finish_reason = "stop"
            elif last:
                self.finish_reason = "length"
            else:
                self._start_block(self.block_idx + 1)
                self.post_steps = 0
        if self.finish_reason == "stop":
            positions, token_ids = self._fill_after_answer(positions, token_ids)
        return StepResult(block, phase, positions, token_ids, block_done or self.finished)

    def _block_done(self, had_masks: bool, edited: bool) -> bool:
        if self.editing:
            return not had_masks and (not edited or self.post_steps >= MAX_POST_STEPS)
        # the official loop also ends after its steps, a mask it committed left in place
        return self.block_masked() == 0 or self.step_in_block >= self.spec.block_steps[0]

    def _grow_stable_prefix(self, final_upto: int | None = None) -> None:
        """The stable prefix, over positions whose tokens can no longer change: every committed
        one before the first mask, and with edits only those of finished blocks."""
        gen, mask, stop = self.generated, self.tokens.mask, self.tokens.stop
        limit = self.gen_length
        if self.editing and final_upto is not None:
            limit = min(limit, max(0, final_upto - self.prompt_len))
        n = self.stable_len
        while n < limit and gen[n] != mask:
            if self.answer_length is None and gen[n] in stop:
                self.answer_length = n
            n += 1
        self.stable_len = n

    def _fill_after_answer(self, positions: list[int], token_ids: list[int]):
        """Every position after the answer's stop token becomes the fill token, as the official
        answer ends there; the changed positions join the step's."""
        gen = self.generated
        start = self.answer_length + 1
        rest = np.flatnonzero(gen[start:] != self.fill_token) + start
        gen[rest] = self.fill_token
        seen = dict(zip(positions, token_ids, strict=True))
        seen.update((int(p), self.fill_token) for p in rest)
        self.stable_len = self.gen_length
        return list(seen), list(seen.values())
