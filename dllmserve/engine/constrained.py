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

The DP runs over each row's window: the block's columns that hold the answer, from a leading
offset `lead` on. LLaDA's and Dream's blocks lie inside the answer (lead 0, the whole block);
a block-diffusion (LLaDA2) block is aligned to absolute positions, so the first one holds the
prompt's tail (lead > 0) and the last one may run past the answer; the columns outside the
window keep the free sampler's tokens (`engine/block_sampler.py`).

The constrained rows are processed together (a few at a time over the vocabulary, to bound
the temporaries), and every per-row setting is uploaded once, asynchronously, when the
iteration is built: a step neither waits for the device nor launches work per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dllmserve import kernels
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
    width: int  # the widest window (each row's window: its DP columns [0, its width))
    temperature: list[float]
    remasking: list[str]
    block: bool  # block-diffusion rows (LLaDA2): the block sampler's confidence
    # device tensors, one entry per constrained row: index (its batch row), starts (automaton
    # state at the window's start), remaining (canvas positions after the window), in_block
    # [rows, width] (the DP columns in the window), cols [rows, width] (each DP column's block
    # column: lead + j, clamped), win [rows, B] (the block columns in the window) and src
    # [rows, B] (each block column's DP column, clamped), temperature, eos_inf
    # (logits_eos_inf), eos_conf and eot_conf (EOS / EOT out of the confidence:
    # confidence_eos_eot_inf, EOS also under logits_eos_inf), use_prob and use_dream (the
    # confidence is the token's probability as `_probabilities` gives it / at the row's
    # temperature)
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
        on = self.on
        g = graph([c.automaton for c in self.constraints], logits.shape[-1], logits.device)
        noise = (seed, step, positions)
        fixed = torch.where(on["in_block"], self.fixed.gather(1, on["cols"]), -1)
        parts = [self._class_scores(g, logits, sl, noise, special, fixed) for sl in self._passes()]
        best, arg = (torch.cat(x) for x in zip(*parts, strict=True))
        tokens, _ = viterbi(g, best, arg, fixed, on["starts"], on["remaining"])
        idx, win, src = on["index"], on["win"], on["src"]
        x0, conf = x0.clone(), conf.clone()
        if self.block:  # the block sampler's own softmax, the free rows' very sum
            tokens = tokens.clamp(max=logits.shape[-1] - 1)  # padding columns: unused
            chosen = torch.where(win, tokens.gather(1, src), x0[idx])
            p = kernels.token_probabilities(logits, idx, chosen, on["temperature"])
            x0[idx], conf[idx] = chosen, torch.where(win, p, conf[idx])
            return x0, conf, conf
        prob = prob.clone()
        probs = [self._probabilities(logits, tokens, sl, special) for sl in self._passes()]
        p, p_conf = (torch.cat(x) for x in zip(*probs, strict=True))

        def put(into: torch.Tensor, values: torch.Tensor) -> None:  # the window's columns
            into[idx] = torch.where(win, values.to(into.dtype).gather(1, src), into[idx])

        put(x0, tokens)
        put(prob, p)
        mine = torch.where(on["use_prob"][:, None], p, conf[idx].gather(1, on["cols"]))
        put(conf, torch.where(on["use_dream"][:, None], p_conf, mine))
        return x0, conf, prob

    def _passes(self) -> list[slice]:
        k = len(self.rows)
        return [slice(j, min(j + ROWS_PER_PASS, k)) for j in range(0, k, ROWS_PER_PASS)]

    def _window(self, x: torch.Tensor, sl: slice) -> torch.Tensor:
        """Rows `sl`'s window of x [R, B, ...] (a copy): [k, width, ...]."""
        return x[self.on["index"][sl, None], self.on["cols"][sl]]

    def _class_scores(self, g: Graph, logits, sl: slice, noise, special, fixed):
        """The DP's per-class scores of rows `sl`: log-probabilities with the sampler's -inf
        entries, plus each row's Gumbel-max noise when sampling (the DP's argmax is then the
        sampler's own token wherever the constraint allows it)."""
        seed, step, positions = noise
        on, idx = self.on, self.on["index"][sl]
        edited = self._edited(self._window(logits, sl), sl, special, False)
        scores = torch.log_softmax(edited.float(), dim=-1)
        if any(t > 0 for t in self.temperature[sl]):
            vocab = torch.arange(logits.shape[-1], device=logits.device)
            at = self._window(positions, sl)[..., None]
            u = uniform64(seed[idx, None, None], step[idx, None, None], at, vocab)
            t = on["temperature"][sl, None, None]
            scores = scores + (t * -torch.log(-torch.log(u))).float()  # 0 where greedy
        rows = torch.arange(sl.start, sl.stop, device=logits.device)
        return class_scores(g, rows, scores, fixed[sl], on["in_block"][sl].sum(1))

    def _probabilities(self, logits, tokens, sl: slice, special):
        """Rows `sl` (LLaDA, Dream): the model's probability of each chosen token (LLaDA's
        low-confidence score, the confidence of low_confidence); if a row uses Dream's
        maskgit_plus, that probability at the row's temperature (its confidence; else the
        first again). The other modes score positions, not tokens, and keep theirs."""
        at = tokens[sl].clamp(max=logits.shape[-1] - 1)[..., None]  # padding columns: unused
        edited = self._edited(self._window(logits, sl), sl, special, True)
        p = torch.softmax(edited.float(), dim=-1).gather(-1, at)[..., 0]
        p_conf = p
        if any(m in DREAM_PROB_MODES for m in self.remasking):
            t = self.on["temperature"][sl, None, None].float()
            scaled = (edited.float() / torch.where(t > 0, t, 1.0)).to(edited.dtype)
            p_conf = torch.softmax(scaled.float(), dim=-1).gather(-1, at)[..., 0]
        return p, p_conf

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


def answer_window(r) -> tuple[int, int]:
    """[start, end) of the request's current block that holds answer positions (absolute
    canvas positions): the whole block for LLaDA and Dream; for a block-diffusion block, less
    the prompt's tail at its start and the positions past the answer at its end."""
    bs, be = r.block_span
    return max(bs, r.prompt_len), min(be, r.prompt_len + r.gen_length)


def _layout(picked: list, width: int) -> dict[str, torch.Tensor]:
    """Each constrained row's window over its block's `width` columns: the DP's columns and
    back (see `ConstrainedRows.on`), the state at its start and the positions after it."""
    fixed = np.full((len(picked), width), -1, dtype=np.int64)
    starts, leads, widths, remaining = [], [], [], []
    for j, (_, r) in enumerate(picked):
        bs, be = r.block_span
        ws, we = answer_window(r)
        block = r.canvas[bs:be]
        fixed[j, : be - bs] = np.where(block == r.tokens.mask, -1, block)
        starts.append(r.constraint.state_at(r.generated, ws - r.prompt_len))
        leads.append(ws - bs)
        widths.append(we - ws)
        remaining.append(r.gen_length - (we - r.prompt_len))
    n = max(widths)
    lead, wide = torch.tensor(leads)[:, None], torch.tensor(widths)[:, None]
    column = torch.arange(width) - lead  # each block column's DP column
    return {
        "starts": torch.tensor(starts),
        "remaining": torch.tensor(remaining),
        "in_block": torch.arange(n) < wide,
        "cols": (lead + torch.arange(n)).clamp(max=width - 1),
        "win": (column >= 0) & (column < wide),
        "src": column.clamp(0, n - 1),
        "fixed": torch.from_numpy(fixed),
    }


def constrained_rows(
    reqs: Sequence, width: int, device: torch.device, *, block: bool = False
) -> ConstrainedRows | None:
    """The constrained rows of an iteration over `reqs` (engine `Request`s, `block`: of a
    block-diffusion model; None if none is constrained), read from the requests' host canvas
    at the iteration's build."""
    picked = [(i, r) for i, r in enumerate(reqs) if getattr(r, "constraint", None) is not None]
    if not picked:
        return None
    params = [r.params for _, r in picked]
    eos_inf = torch.tensor([p.logits_eos_inf for p in params])
    conf_inf = torch.tensor([p.confidence_eos_eot_inf for p in params])
    greedy = torch.tensor([p.temperature == 0 for p in params])
    host = {
        "index": torch.tensor([i for i, _ in picked]),
        **_layout(picked, width),
        "temperature": torch.tensor([p.temperature for p in params], dtype=torch.float64),
        "eos_inf": eos_inf,
        "eos_conf": eos_inf | (conf_inf & greedy),
        "eot_conf": conf_inf,
        "use_prob": torch.tensor([p.remasking == "low_confidence" for p in params]),
        "use_dream": torch.tensor([p.remasking in DREAM_PROB_MODES for p in params]),
    }
    on = upload(host, device)
    return ConstrainedRows(
        rows=[i for i, _ in picked],
        constraints=[r.constraint for _, r in picked],
        width=host["in_block"].shape[1],
        temperature=[p.temperature for p in params],
        remasking=[p.remasking for p in params],
        block=block,
        on=on,
        fixed=on.pop("fixed"),
    )
