"""`SparseConfig` (the seed guide's import path) and the FULL / SELECT / REUSE step phases."""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from dllmserve.errors import ValidationError, echo
from dllmserve.sampling_params import check_float, check_int

# Bounds that hold whatever the model (the layer count, length and block length of the served
# model are checked when a request is admitted). The max-pool costs pool_kernel comparisons per
# candidate, its windows clipped at the candidates' ends (so a wider kernel than the candidates
# is no error); no model has more layers than MAX_LAYERS.
MAX_POOL_KERNEL = 63
MAX_LAYERS = 1024


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
            _check_ratio_count(self.layer_ratios)  # before any copy: a huge list costs nothing
            object.__setattr__(self, "layer_ratios", tuple(self.layer_ratios))
        self.validate()
        if self.layer_ratios is not None:
            object.__setattr__(self, "layer_ratios", tuple(float(r) for r in self.layer_ratios))

    def validate(self) -> None:
        f = "sparse_config."
        for name in ("enabled", "head_select", "layer_wise"):
            if not isinstance(getattr(self, name), bool):
                raise ValidationError(f + name, f"must be a bool, got {echo(getattr(self, name))}")
        _ratio(f + "retention_ratio", self.retention_ratio)
        check_int(f + "delay_step", self.delay_step, 0)
        check_int(f + "default_block_len", self.default_block_len, 1)
        check_int(f + "pool_kernel", self.pool_kernel, 1, MAX_POOL_KERNEL)
        if self.pool_kernel % 2 == 0:
            raise ValidationError(
                f + "pool_kernel", f"must be odd, in [1, {MAX_POOL_KERNEL}], got {self.pool_kernel}"
            )
        if self.layer_ratios is not None:
            if not self.layer_wise:
                raise ValidationError(f + "layer_ratios", "needs layer_wise=True")
            _check_ratio_count(self.layer_ratios)
            for i, r in enumerate(self.layer_ratios):
                _ratio(f"{f}layer_ratios[{i}]", r)

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
    check_float(name, value, 0.0, 1.0, open_low=True)


def _check_ratio_count(ratios: Sequence[float]) -> None:
    if not 1 <= len(ratios) <= MAX_LAYERS:
        raise ValidationError(
            "sparse_config.layer_ratios",
            f"must hold one ratio per layer (1 to {MAX_LAYERS} entries), got {len(ratios)}",
        )
