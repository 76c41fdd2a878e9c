"""`SparseConfig` (the seed guide's import path) and the FULL / SELECT / REUSE step phases."""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from dllmserve.errors import ValidationError


class Phase(enum.IntEnum):
    """What one denoising step of one request does (docs/design.md §10)."""

    FULL = 0  # full forward over the whole sequence, no cache
    SELECT = 1  # full forward, then keep the most relevant K/V per KV head in the cache
    REUSE = 2  # forward only the block window against the kept K/V


@dataclass(frozen=True)
class SparseConfig:
    """Head-level sparse retention of the K/V outside the current block.

    At step ``delay_step`` of every block each KV head keeps the ``retention_ratio`` share of the
    positions outside the block that its queries score highest; later steps of the block attend
    only to those and the block itself. ``enabled=False`` is the exact dense algorithm.
    """

    enabled: bool = True
    retention_ratio: float = 0.5
    delay_step: int = 1
    default_block_len: int = 32
    head_select: bool = True
    pool_kernel: int = 3
    layer_wise: bool = False
    layer_ratios: Sequence[float] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.layer_ratios is not None:
            object.__setattr__(self, "layer_ratios", tuple(float(r) for r in self.layer_ratios))
        self.validate()

    def validate(self) -> None:
        f = "sparse_config."
        for name in ("enabled", "head_select", "layer_wise"):
            if not isinstance(getattr(self, name), bool):
                raise ValidationError(f + name, f"must be a bool, got {getattr(self, name)!r}")
        _ratio(f + "retention_ratio", self.retention_ratio)
        if isinstance(self.delay_step, bool) or not isinstance(self.delay_step, int):
            raise ValidationError(f + "delay_step", f"must be an integer, got {self.delay_step!r}")
        if self.delay_step < 0:
            raise ValidationError(f + "delay_step", f"must be >= 0, got {self.delay_step}")
        if (
            isinstance(self.default_block_len, bool)
            or not isinstance(self.default_block_len, int)
            or self.default_block_len < 1
        ):
            raise ValidationError(
                f + "default_block_len", f"must be an integer >= 1, got {self.default_block_len!r}"
            )
        if (
            isinstance(self.pool_kernel, bool)
            or not isinstance(self.pool_kernel, int)
            or self.pool_kernel < 1
            or self.pool_kernel % 2 == 0
        ):
            raise ValidationError(
                f + "pool_kernel", f"must be an odd integer >= 1, got {self.pool_kernel!r}"
            )
        if self.layer_ratios is not None:
            if not self.layer_wise:
                raise ValidationError(f + "layer_ratios", "needs layer_wise=True")
            if len(self.layer_ratios) == 0:
                raise ValidationError(f + "layer_ratios", "must hold one ratio per layer")
            for i, r in enumerate(self.layer_ratios):
                _ratio(f"{f}layer_ratios[{i}]", r)

    @property
    def is_sparse(self) -> bool:
        return self.enabled

    def match_key(self) -> tuple:
        """Requests whose keys are equal may be dispatched in one batch by the scheduler."""
        if not self.enabled:
            return (False,)
        return (
            True,
            self.retention_ratio,
            self.delay_step,
            self.default_block_len,
            self.head_select,
            self.pool_kernel,
            self.layer_wise,
            self.layer_ratios,
        )

    def ratios_for(self, n_layers: int) -> list[float]:
        """Per-layer retention ratios.

        Without ``layer_wise`` every layer uses ``retention_ratio``. With it and no explicit
        ``layer_ratios``, the ratio falls linearly from the first layer to the last around the same
        mean, with a spread of ±min(0.5, (1-r)/r, 1)·r so every ratio stays in (0, 1]: early
        layers, whose attention is broad, keep more than deep ones.
        """
        r = self.retention_ratio
        if not self.layer_wise:
            return [r] * n_layers
        if self.layer_ratios is not None:
            if len(self.layer_ratios) != n_layers:
                raise ValidationError(
                    "sparse_config.layer_ratios",
                    f"must hold one ratio per layer ({n_layers}), got {len(self.layer_ratios)}",
                )
            return list(self.layer_ratios)
        if n_layers == 1:
            return [r]
        spread = min(0.5, (1.0 - r) / r) * r
        return [r + spread * (1.0 - 2.0 * i / (n_layers - 1)) for i in range(n_layers)]

    def phase(self, step_in_block: int) -> Phase:
        """The phase of a step, counted from 0 inside its block."""
        if not self.enabled or step_in_block < self.delay_step:
            return Phase.FULL
        return Phase.SELECT if step_in_block == self.delay_step else Phase.REUSE


def kept_count(n_candidates: int, ratio: float) -> int:
    """Entries each KV head keeps: min(max(1, floor(N_c * r)), N_c); 0 when there is nothing."""
    if n_candidates <= 0:
        return 0
    return min(max(1, math.floor(n_candidates * ratio + 1e-9)), n_candidates)


def _ratio(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValidationError(name, f"must be a number in (0, 1], got {value!r}")
    if not 0.0 < value <= 1.0:
        raise ValidationError(name, f"must be in (0, 1], got {value}")
