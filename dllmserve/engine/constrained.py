"""Structured outputs in the engine: the constrained requests' share of a sampling step
(docs/structured_outputs.md).

A request with a `structured_output` carries a `RequestConstraint` (its compiled automaton and
the state its committed canvas has reached). An iteration with such requests carries a
`ConstrainedRows` in its `SamplingBatch`: in `sampler.sample`, after the usual tokens and
confidences, `choose` replaces each constrained row's tokens with the DP's assignment
(`structured.dp`) and its confidences with theirs, so the step then commits its usual number
of positions (by confidence, threshold or Dream's schedule) from that assignment; `observe`
records the commits, which keeps the block's committed tokens right in chained and refreshed
iterations (they reuse this object). Unconstrained rows are untouched and pay nothing.

The constrained rows are processed together (a few at a time over the vocabulary, to bound
the temporaries), and every per-row setting is uploaded once, asynchronously, when the
iteration is built: a step neither waits for the device nor launches work per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dllmserve.engine.upload import upload
from dllmserve.errors import ValidationError
from dllmserve.kernels.noise import uniform64
from dllmserve.structured.automaton import TokenAutomaton
from dllmserve.structured.compiler import compile_constraint
from dllmserve.structured.dp import Graph, class_scores, graph, viterbi
from dllmserve.structured.spec import FIELD

DREAM_PROB_MODES = ("maskgit_plus",)  # Dream modes whose confidence is the token's probability
ROWS_PER_PASS = 8  # rows per pass over the vocabulary: bounds the [rows, block, vocab] temporaries


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
    width: int  # the widest block (each row's block: its first `widths` columns)
    temperature: list[float]
    remasking: list[str]
    # device tensors, one entry per constrained row: index (its batch row), starts (automaton
    # state at the block's start), remaining (canvas positions after the block), in_block
    # [rows, width], temperature, eos_inf (logits_eos_inf), eos_conf and eot_conf (EOS / EOT
    # out of the confidence: confidence_eos_eot_inf, EOS also under logits_eos_inf), use_prob
    # and use_dream (the confidence is the token's probability, at temperature 1 / at its own)
    on: dict[str, torch.Tensor]
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
        n, on = self.width, self.on
        g = graph([c.automaton for c in self.constraints], logits.shape[-1], logits.device)
        noise = (seed, step, positions)
        parts = [self._class_scores(g, logits, sl, noise, special) for sl in self._passes()]
        best, arg = (torch.cat(x) for x in zip(*parts, strict=True))
        tokens, _ = viterbi(g, best, arg, self.fixed[:, :n], on["starts"], on["remaining"])
        p, p_conf = (
            torch.cat(x)
            for x in zip(
                *[self._probabilities(logits, tokens, sl, special) for sl in self._passes()],
                strict=True,
            )
        )
        idx, inside = on["index"], on["in_block"]
        x0, conf, prob = x0.clone(), conf.clone(), prob.clone()
        x0[idx, :n] = torch.where(inside, tokens, x0[idx, :n])
        prob[idx, :n] = torch.where(inside, p.to(prob.dtype), prob[idx, :n])
        mine = torch.where(on["use_prob"][:, None], p.to(conf.dtype), conf[idx, :n])
        mine = torch.where(on["use_dream"][:, None], p_conf.to(conf.dtype), mine)
        conf[idx, :n] = torch.where(inside, mine, conf[idx, :n])
        return x0, conf, prob

    def _passes(self) -> list[slice]:
        k = len(self.rows)
        return [slice(j, min(j + ROWS_PER_PASS, k)) for j in range(0, k, ROWS_PER_PASS)]

    def _class_scores(self, g: Graph, logits, sl: slice, noise, special):
        """The DP's per-class scores of rows `sl`: log-probabilities with the sampler's -inf
        entries, plus each row's Gumbel-max noise when sampling (the DP's argmax is then the
        sampler's own token wherever the constraint allows it)."""
        seed, step, positions = noise
        on, n, idx = self.on, self.width, self.on["index"][sl]
        edited = self._edited(logits[idx, :n], sl, special, False)
        scores = torch.log_softmax(edited.float(), dim=-1)
        if any(t > 0 for t in self.temperature[sl]):
            vocab = torch.arange(logits.shape[-1], device=logits.device)
            u = uniform64(
                seed[idx, None, None], step[idx, None, None], positions[idx, :n, None], vocab
            )
            t = on["temperature"][sl, None, None]
            scores = scores + (t * -torch.log(-torch.log(u))).float()  # 0 where greedy
        rows = torch.arange(sl.start, sl.stop, device=logits.device)
        return class_scores(g, rows, scores, self.fixed[sl, :n], on["in_block"][sl].sum(1))

    def _probabilities(self, logits, tokens, sl: slice, special):
        """Rows `sl`: the model's probability of each chosen token (LLaDA's low-confidence
        score, the confidence of low_confidence) and, if a row uses Dream's maskgit_plus, that
        probability at the row's temperature (its confidence; else the first again). The other
        modes score positions, not tokens, and keep their confidences."""
        n, idx = self.width, self.on["index"][sl]
        edited = self._edited(logits[idx, :n], sl, special, True)
        at = tokens[sl].clamp(max=logits.shape[-1] - 1)[..., None]  # padding columns: unused
        p = torch.softmax(edited.float(), dim=-1).gather(-1, at)[..., 0]
        if not any(m in DREAM_PROB_MODES for m in self.remasking):
            return p, p
        t = self.on["temperature"][sl, None, None].float()
        scaled = (edited.float() / torch.where(t > 0, t, 1.0)).to(edited.dtype)
        return p, torch.softmax(scaled.float(), dim=-1).gather(-1, at)[..., 0]

    def observe(self, x0: torch.Tensor, commit: torch.Tensor) -> None:
        """Record the step's commits of the constrained rows (in place)."""
        idx = self.on["index"]
        self.fixed = torch.where(commit[idx], x0[idx], self.fixed)

    def _edited(self, rows: torch.Tensor, sl: slice, special, for_confidence: bool):
        """`rows` (a copy) with the sampler's -inf entries: the mask, EOS under logits_eos_inf,
        and for LLaDA's confidence EOT (and EOS when greedy) under confidence_eos_eot_inf."""
        mask_id, eos_id, eot_id = special
        rows[..., mask_id].fill_(-torch.inf)  # a fill: setting a Python value would upload it
        bans = [(eos_id, "eos_conf" if for_confidence else "eos_inf")]
        if for_confidence and eot_id is not None:
            bans.append((eot_id, "eot_conf"))
        for column, name in bans:
            rows[..., column] = torch.where(self.on[name][sl, None], -torch.inf, rows[..., column])
        return rows


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
    params = [r.params for _, r in picked]
    n = max(widths)
    eos_inf = torch.tensor([p.logits_eos_inf for p in params])
    conf_inf = torch.tensor([p.confidence_eos_eot_inf for p in params])
    greedy = torch.tensor([p.temperature == 0 for p in params])
    host = {
        "index": torch.tensor([i for i, _ in picked]),
        "starts": torch.tensor(starts),
        "remaining": torch.tensor(remaining),
        "in_block": torch.arange(n) < torch.tensor(widths)[:, None],
        "temperature": torch.tensor([p.temperature for p in params], dtype=torch.float64),
        "eos_inf": eos_inf,
        "eos_conf": eos_inf | (conf_inf & greedy),
        "eot_conf": conf_inf,
        "use_prob": torch.tensor([p.remasking == "low_confidence" for p in params]),
        "use_dream": torch.tensor([p.remasking in DREAM_PROB_MODES for p in params]),
        "fixed": torch.from_numpy(fixed),
    }
    on = upload(host, device)
    return ConstrainedRows(
        rows=[i for i, _ in picked],
        constraints=[r.constraint for _, r in picked],
        width=n,
        temperature=[p.temperature for p in params],
        remasking=[p.remasking for p in params],
        on=on,
        fixed=on.pop("fixed"),
    )
