"""Counter-based uniform noise: a request's random numbers depend only on its seed and where
they are used (step, position, vocabulary id), never on the batch around it.

A per-request ``torch.Generator`` would force one sampling call per request; hashing the
coordinates instead lets one batched op (or one Triton kernel) draw for every request at once
while keeping each request's stream reproducible.

    x = seed*K1 + step*K2 + position*K3 + vocab_id*K4       (mod 2^64)
    z = splitmix64_finalizer(x)
    u = ((z >> 11) + 0.5) * 2^-53                           in (0, 1), float64
"""

from __future__ import annotations

import torch

_K1 = 0x9E3779B97F4A7C15
_K2 = 0xD1B54A32D192ED03
_K3 = 0xABC98388FB8FAC03
_K4 = 0x8CB92BA72F3D8DD7
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def _i64(c: int) -> int:
    """A uint64 constant as the int64 with the same bits (torch has no full uint64 arithmetic)."""
    return c - (1 << 64) if c >= 1 << 63 else c


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bits."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def uniform64(
    seed: torch.Tensor, step: torch.Tensor, position: torch.Tensor, vocab_id: torch.Tensor | int
) -> torch.Tensor:
    """Uniform float64 in (0, 1) for broadcastable int64 coordinates. A plain-int `vocab_id`
    (one coordinate for every element) adds its product as a host constant, the same bits
    without uploading a tensor in the middle of a step."""
    if isinstance(vocab_id, int):
        term = _i64((vocab_id * _K4) % (1 << 64))
    else:
        term = vocab_id * _i64(_K4)
    x = seed * _i64(_K1) + step * _i64(_K2) + position * _i64(_K3) + term
    x = (x ^ _shr(x, 30)) * _i64(_M1)
    x = (x ^ _shr(x, 27)) * _i64(_M2)
    x = x ^ _shr(x, 31)
    return (_shr(x, 11).to(torch.float64) + 0.5) * (2.0**-53)
