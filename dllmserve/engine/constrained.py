"""Structured outputs in the engine: the constrained requests' share of a sampling step
(docs/structured_outputs.md).

A request with a `structured_output` carries a `RequestConstraint` (its compiled automaton and
the state its committed canvas has reached). An iteration with such requests carries a
`ConstrainedRows` in its `SamplingBatch`: in `sampler.sample`, after the usual tokens and
confidences, `choose` replaces each constrained row's tokens with the DP's assignment
(`structured.dp.best_assignment`) and its confidences with theirs, so the step then commits
its usual number of positions (by confidence, threshold or Dream's schedule) from that
assignment; `observe` records the commits, which keeps the block's committed tokens right in
chained and refreshed iterations (they reuse this object). Unconstrained rows are untouched and
pay nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dllmserve.errors import ValidationError
from dllmserve.kernels.noise import uniform64
from dllmserve.structured.automaton import TokenAutomaton
from dllmserve.structured.compiler import compile_constraint
from dllmserve.structured.dp import best_assignments
from dllmserve.structured.spec import FIELD

DREAM_PROB_MODES = ("maskgit_plus",)  # Dream modes whose confidence is the token's probability


class RequestConstraint:
    """One request's compiled automaton and the state its committed prefix has reached."""

    def __init__(self, automaton: TokenAutomaton) -> None:
        self.automaton = automaton
        self._walked = (0, automaton.start)  # (offset, state): the last prefix walked

    @property
    def min_length(self) -> int:
        return self.automaton.min_length

    def state_at(self, generated: np.ndarray, offset: int) -> int:
        """The state after generated[:offset] (all committed: a block's start)."""
        done, state = self._walked
        if offset < done:
            done, state = 0, self.automaton.start
        state = self.automaton.walk(state, generated[done:offset].tolist())
        if state < 0:  # every commit comes from a completable assignment: a bug if reached
            raise RuntimeError("a committed token left the structured output's automaton")
        self._walked = (offset, state)
        return state


def request_constraint(params, tokenizer, stop_ids: Sequence[int], vocab_size: int):
    """The `RequestConstraint` of a request's sampling params (None without a structured
    output). Compiles (cached) and raises ValidationError naming the field."""
    spec = params.structured_output
    if spec is None:
        return None
    if tokenizer is None:
        raise ValidationError(FIELD, "needs the model's tokenizer; this engine serves token ids")
    from dllmserve.structured.vocab import token_bytes

    tb = token_bytes(tokenizer, vocab_size, tuple(sorted(stop_ids)), spec.field)
    return RequestConstraint(compile_constraint(spec, tb))


@dataclass
class ConstrainedRows:
    """The constrained rows of one iteration's batch."""

    rows: list[int]  # their rows in the batch
    constraints: list[RequestConstraint]
    widths: list[int]  # the block's positions (the row's first `width` columns)
    starts: list[int]  # automaton state at the block's start
    remaining: list[int]  # canvas positions after the block
    temperature: list[float]
    remasking: list[str]
    flags: list[tuple[bool, bool]]  # (logits_eos_inf, confidence_eos_eot_inf)
    fixed: torch.Tensor  # int64 [rows, B]: the block's committed tokens, -1 where masked

    def choose(
        self,
        logits: torch.Tensor,
        x0: torch.Tensor,
        conf: torch.Tensor,
        prob: torch.Tensor,
        seed: torch.Tensor,
        step: torch.Tensor,
        positions: torch.Tensor,
        special: tuple[int, int, int | None],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x0, conf and prob [R, B] with each constrained row's tokens from the DP, their
        confidences and probabilities (`special`: mask, EOS and EOT ids)."""
        x0, conf, prob = x0.clone(), conf.clone(), prob.clone()
        n = max(self.widths)
        scores = torch.stack(
            [
                self._scores(logits[i, :n], j, seed, step, positions, special)
                for j, i in enumerate(self.rows)
            ]
        )
        automata = [c.automaton for c in self.constraints]
        tokens, _ = best_assignments(
            automata, scores, self.fixed[:, :n], self.starts, self.remaining, self.widths
        )
        for j, i in enumerate(self.rows):
            w = self.widths[j]
            x0[i, :w] = tokens[j, :w]
            p = self._probability(logits[i, :w], tokens[j, :w], j, special)
            prob[i, :w] = p.to(prob.dtype)
            conf[i, :w] = self._confidence(logits[i, :w], tokens[j, :w], j, special, conf[i, :w], p)
        return x0, conf, prob

    def _scores(self, row, j, seed, step, positions, special) -> torch.Tensor:
        """Row j's DP scores [n, vocab]: log-probabilities with the sampler's -inf entries, plus
        its Gumbel-max noise when sampling (the DP's argmax is then the sampler's own token
        wherever the constraint allows it)."""
        i, n = self.rows[j], row.shape[0]
        scores = torch.log_softmax(self._edited(row, j, special, False).float(), dim=-1)
        t = self.temperature[j]
        if t > 0:
            vocab = torch.arange(row.shape[-1], device=row.device)
            u = uniform64(seed[i], step[i], positions[i, :n, None], vocab)
            scores = scores + (t * -torch.log(-torch.log(u))).float()
        return scores

    def observe(self, x0: torch.Tensor, commit: torch.Tensor) -> None:
        """Record the step's commits of the constrained rows (in place)."""
        idx = torch.tensor(self.rows, device=x0.device)
        self.fixed = torch.where(commit[idx], x0[idx], self.fixed)

    def _edited(self, row, j, special, for_confidence: bool) -> torch.Tensor:
        """The sampler's -inf entries: the mask, EOS under logits_eos_inf, and for LLaDA's
        confidence EOT (and EOS when greedy) under confidence_eos_eot_inf."""
        mask_id, eos_id, eot_id = special
        eos_inf, conf_inf = self.flags[j]
        row = row.clone()
        row[:, mask_id] = -torch.inf
        if eos_inf or (for_confidence and conf_inf and self.temperature[j] == 0):
            row[:, eos_id] = -torch.inf
        if for_confidence and conf_inf and eot_id is not None:
            row[:, eot_id] = -torch.inf
        return row

    def _probability(self, row, tokens, j, special) -> torch.Tensor:
        """The model's probability of each chosen token: LLaDA's low-confidence score."""
        p = torch.softmax(self._edited(row, j, special, True).float(), dim=-1)
        return p.gather(-1, tokens[:, None])[:, 0]

    def _confidence(self, row, tokens, j, special, conf, prob) -> torch.Tensor:
        """The remasking mode's confidence at the chosen tokens: the token's probability for
        low_confidence (and Dream's maskgit_plus, at the temperature); the other modes score
        positions, not tokens, and keep theirs."""
        mode, t = self.remasking[j], self.temperature[j]
        if mode == "low_confidence":
            return prob.to(conf.dtype)
        if mode in DREAM_PROB_MODES:
            edited = self._edited(row, j, special, True)
            p = torch.softmax((edited / t if t > 0 else edited).float(), dim=-1)
            return p.gather(-1, tokens[:, None])[:, 0].to(conf.dtype)
        return conf


def constrained_rows(reqs: Sequence, width: int, device: torch.device) -> ConstrainedRows | None:
    """The constrained rows of an iteration over `reqs` (engine `Request`s; None if none is
    constrained), read from the requests' host canvas at the iteration's build."""
    picked = [(i, r) for i, r in enumerate(reqs) if getattr(r, "constraint", None) is not None]
    if not picked:
        return None
    fixed = np.full((len(picked), width), -1, dtype=np.int64)
    starts, widths, remaining = [], [], []
    for j, (_, r) in enumerate(picked):
        bs, be = r.block_span
        block = r.canvas[bs:be]
        fixed[j, : be - bs] = np.where(block == r.tokens.mask, -1, block)
        starts.append(r.constraint.state_at(r.generated, bs - r.prompt_len))
        widths.append(be - bs)
        remaining.append(r.gen_length - (be - r.prompt_len))
    return ConstrainedRows(
        rows=[i for i, _ in picked],
        constraints=[r.constraint for _, r in picked],
        widths=widths,
        starts=starts,
        remaining=remaining,
        temperature=[r.params.temperature for _, r in picked],
        remasking=[r.params.remasking for _, r in picked],
        flags=[(r.params.logits_eos_inf, r.params.confidence_eos_eot_inf) for _, r in picked],
        fixed=torch.from_numpy(fixed).to(device),
    )
