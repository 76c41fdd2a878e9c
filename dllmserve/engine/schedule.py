"""How a request's steps are spread over its blocks and its tokens over its steps
(docs/design.md §5).

Two plans for the tokens of a block, chosen by `SamplingParams.schedule`:
- "blocks", LLaDA's: `m // s` tokens per step, one more for the first `m % s` steps
  (`num_transfer_tokens`). When the step count divides evenly over the blocks this is exactly
  the official schedule; otherwise the remainder goes to the earliest blocks and steps.
- "dream", Dream's timestep schedule: timesteps `linspace(1, eps, s + 1)` in float32; step i
  commits `int(n_i * (1 - t_{i+1} / t_i))` of the n_i masks left (all of them at the last
  step); with `origin` each mask is instead committed independently with probability
  `1 - t_{i+1} / t_i` (1 at the last step). The arithmetic is float32 like the official code's,
  so the counts are the same to the token.

Both plans depend only on the block's size and steps, never on the tokens, so every step's
count is known before the step runs. `Request` builds its block's `BlockPlan` here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class BlockPlan:
    """The tokens each step of one block commits."""

    commits: tuple[int, ...]  # per step; the sampler commits the k most confident
    transfer_probs: tuple[float, ...] | None  # per step (NaN: use `commits`); None: never


def even_split(total: int, parts: int) -> list[int]:
    """`total` over `parts`: `total // parts` each, one more for the first `total % parts`."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def block_bounds(gen_length: int, block_length: int) -> list[tuple[int, int]]:
    """[start, end) of each block as offsets into the generated canvas; the last may be short."""
    return [(s, min(s + block_length, gen_length)) for s in range(0, gen_length, block_length)]


def block_plan(
    schedule: str, masks: int, steps: int, eps: float, *, independent: bool = False
) -> BlockPlan:
    """The plan of a block of `masks` masks over `steps` steps. `independent` (the "dream"
    schedule's `origin` without a threshold): each mask is committed with the step's
    probability."""
    if schedule == "blocks":
        return BlockPlan(tuple(even_split(masks, steps)), None)
    if independent:  # the count is random; the last step commits whatever is left
        probs = dream_transfer_probs(steps, eps)
        return BlockPlan((0,) * (steps - 1) + (masks,), (*probs, math.nan))
    return BlockPlan(dream_commits(masks, steps, eps), None)


@lru_cache(maxsize=256)
def dream_timesteps(steps: int, eps: float) -> tuple[np.float32, ...]:
    """`torch.linspace(1, eps, steps + 1)` in float32, value for value as torch's CPU kernel
    computes it on AVX2 / AVX-512 machines (tests/test_schedule.py): `step = (eps - 1) / steps`,
    then `1 + step * i` for the first half and `eps - step * (steps - i)` for the rest, each
    with one rounding (a fused multiply-add)."""
    n = steps + 1
    start, end = np.float32(1.0), np.float32(eps)
    step = np.float32((end - start) / np.float32(steps))
    half = n // 2
    return tuple(
        _fma32(step, i, start) if i < half else _fma32(-step, n - 1 - i, end) for i in range(n)
    )


@lru_cache(maxsize=1024)
def dream_commits(masks: int, steps: int, eps: float) -> tuple[int, ...]:
    """Tokens committed at each step: `int(n * (1 - s / t))` in float32 (n the masks left), and
    every mask left at the last step."""
    ts = dream_timesteps(steps, eps)
    left, out = masks, []
    for i in range(steps):
        if i == steps - 1:
            k = left
        else:
            k = int(np.float32(left) * (np.float32(1.0) - ts[i + 1] / ts[i]))
        out.append(k)
        left -= k
    return tuple(out)


@lru_cache(maxsize=256)
def dream_transfer_probs(steps: int, eps: float) -> tuple[float, ...]:
    """`origin`'s probability of committing a mask at each step but the last (which commits
    every mask left): `1 - s / t` in float32."""
    ts = dream_timesteps(steps, eps)
    return tuple(float(np.float32(1.0) - ts[i + 1] / ts[i]) for i in range(steps - 1))


def _fma32(a: np.float32, k: int, b: np.float32) -> np.float32:
    """`a * k + b` rounded once to float32 (to nearest, ties to even), in exact integers."""
    ma, ea = _mantissa(a)
    mb, eb = _mantissa(b)
    e = min(ea, eb)
    n = (ma * k << (ea - e)) + (mb << (eb - e))  # the exact value is n * 2^e
    shift = abs(n).bit_length() - 24
    if shift > 0:
        q, r = divmod(abs(n), 1 << shift)
        half = 1 << (shift - 1)
        q += r > half or (r == half and q & 1)
        n, e = (q if n > 0 else -q), e + shift
    return np.float32(math.ldexp(n, e))


def _mantissa(x: np.float32) -> tuple[int, int]:
    """(m, e) with x = m * 2^e exactly and m an integer of at most 24 bits."""
    frac, e = math.frexp(float(x))
    return int(frac * (1 << 24)), e - 24
