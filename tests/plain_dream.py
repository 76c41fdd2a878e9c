"""Dream's own sampler (`diffusion_generate`), plainly, for the tests.

Written from the facts of docs/models.md ("Dream"): timesteps `torch.linspace(1, eps, steps + 1)`;
at step i (t = ts[i], s = ts[i + 1]) the masked positions' logits are divided by the
temperature, filtered by top_p then top_k, and softmaxed over the whole vocabulary; the token is
the most likely one, the confidence its probability (`maskgit_plus`), the top-1 − top-2 margin
(`topk_margin`) or Σ p log(p + 1e-10) (`entropy`); `int(n_masked · (1 − s/t))` of the most
confident are committed, every mask at the last step; `origin` commits each mask with
probability 1 − s/t instead; `alg_temp > 0` draws the positions from softmax(conf / alg_temp).
The arithmetic is the official one (float32 tensors), one unpacked sequence, a full forward
every step.

Where the official code draws from torch's generator, this uses the engine's documented stream
(`uniform64` at (seed, step, position, vocabulary id)): a token at temperature > 0 by float64
Gumbel-max, `origin`'s uniform at id V, `alg_temp`'s Gumbel key at id V + 1; ties in confidence
go to the lower position; a position's token is never the mask token (the filters keep the most
likely other one).
"""

from __future__ import annotations

import math

import torch

from dllmserve.kernels.noise import uniform64
from tests.plain_reference import PlainModel, shift, transfer_plan


class DreamStep:
    """One Dream denoising step on a single sequence, in place on `x`."""

    def __init__(self, m: PlainModel, gen_start: int, alg: str, temperature: float = 0.0,
                 top_p: float | None = None, top_k: int | None = None, alg_temp: float = 0.0,
                 eps: float = 1e-3, seed: int = 0) -> None:  # fmt: skip
        self.m, self.gen_start, self.alg = m, gen_start, alg
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.alg_temp, self.eps, self.seed = alg_temp, eps, seed

    def __call__(self, logits, x, span, step, i, n_steps) -> None:
        """`logits` [L, V] (already shifted) of sequence `x`; commit inside `span` = [s, e) at
        step i of the block's n_steps (the request's global step `step`)."""
        m, (s, e) = self.m, span
        masked = [p for p in range(s, e) if x[p] == m.mask_id]
        if not masked:
            return
        ts = torch.linspace(1, self.eps, n_steps + 1)
        t, s_next = ts[i], ts[i + 1]
        last = i == n_steps - 1
        rows = logits[masked]
        tokens, probs = self.tokens_and_probs(rows, step, masked)
        if self.alg == "origin":
            p_transfer = 1 - s_next / t
            for j, p in enumerate(masked):
                if last or self.uniform(step, p, rows.shape[-1]).float() < p_transfer:
                    x[p] = tokens[j]
            return
        conf = self.confidence(probs, tokens)
        n = torch.tensor(len(masked)) / 1  # float32, as mask_index.sum() / batch
        k = int(n) if last else int(n * (1 - s_next / t))
        key = [float(c) for c in conf]
        if self.alg_temp > 0:
            V = rows.shape[-1]
            gumbel = [-math.log(-math.log(float(self.uniform(step, p, V + 1)))) for p in masked]
            key = [c / self.alg_temp + g for c, g in zip(key, gumbel, strict=True)]
        order = sorted(range(len(masked)), key=lambda j: (-key[j], masked[j]))
        for j in order[:k]:
            x[masked[j]] = tokens[j]

    def uniform(self, step: int, p: int, vocab_id: int) -> torch.Tensor:
        pos = torch.tensor(p - self.gen_start)
        return uniform64(torch.tensor(self.seed), torch.tensor(step), pos, torch.tensor(vocab_id))

    def tokens_and_probs(self, rows, step, masked):
        """Each masked position's token and its filtered probabilities [n, V] (mask included)."""
        m = self.m
        scaled = rows / self.temperature if self.temperature > 0 else rows.clone()
        removed = torch.zeros_like(scaled, dtype=torch.bool)
        if self.top_p is not None and self.top_p < 1:
            srt, idx = torch.sort(scaled, dim=-1, descending=True, stable=True)
            beyond = torch.softmax(srt, dim=-1).cumsum(dim=-1) > self.top_p
            beyond[:, 1:] = beyond[:, :-1].clone()  # the token crossing top_p stays
            beyond[:, 0] = False
            removed |= torch.zeros_like(removed).scatter(-1, idx, beyond)
        if self.top_k is not None:
            kth = torch.topk(scaled.masked_fill(removed, -math.inf), self.top_k).values[:, -1:]
            removed |= scaled < kth
        other = scaled.clone()
        other[:, m.mask_id] = -math.inf
        best_other = other.argmax(-1)
        removed[torch.arange(len(rows)), best_other] = False
        probs = torch.softmax(scaled.masked_fill(removed, -math.inf), dim=-1)
        choice = rows.masked_fill(removed, -math.inf)
        choice[:, m.mask_id] = -math.inf
        if self.temperature > 0:
            V = rows.shape[-1]
            u = torch.stack([
                uniform64(torch.tensor(self.seed), torch.tensor(step),
                          torch.tensor(p - self.gen_start), torch.arange(V))
                for p in masked
            ])  # fmt: skip
            choice = choice.double().exp() / (-torch.log(u)) ** self.temperature
        return choice.argmax(-1), probs

    def confidence(self, probs, tokens):
        if self.alg == "maskgit_plus":
            return probs.gather(-1, tokens[:, None])[:, 0]
        if self.alg == "topk_margin":
            top = torch.sort(probs, dim=-1, descending=True).values
            return top[:, 0] - top[:, 1]
        if self.alg == "entropy":
            return (probs * torch.log(probs + 1e-10)).sum(dim=-1)
        raise ValueError(self.alg)


def dream_generate(
    m: PlainModel, prompt: list[int], gen_length: int, steps: int,
    block_length: int | None = None, **options,
) -> list[int]:  # fmt: skip
    """Dream's sampler with a full forward every step. `block_length` splits the canvas into
    blocks, each running the schedule over its own steps and masks (Fast-dLLM's Dream)."""
    P = len(prompt)
    x = torch.tensor(prompt + [m.mask_id] * gen_length)
    block = block_length or gen_length
    n_blocks = -(-gen_length // block)
    step_fn = DreamStep(m, P, **options)
    g = 0
    for b, n_steps in enumerate(transfer_plan(steps, n_blocks)):
        span = (P + b * block, min(P + (b + 1) * block, P + gen_length))
        for i in range(n_steps):
            step_fn(shift(m.forward(x)), x, span, g, i, n_steps)
            g += 1
    return x[P:].tolist()
