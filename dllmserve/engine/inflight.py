"""An iteration whose results are on their way from the device to the host."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dllmserve.engine.batch import IterationBatch
from dllmserve.engine.request import Request


@dataclass
class InFlight:
    reqs: list[Request]
    batch: IterationBatch
    x0: torch.Tensor  # [R, B] on the device
    commit: torch.Tensor  # [R, B] on the device
    # [2, R, B] int64 (x0, commit), or [3, R, B] with the float64 confidences' bits third;
    # pinned on CUDA, filled asynchronously
    host: torch.Tensor
    done: torch.cuda.Event | None

    @classmethod
    def start(
        cls,
        reqs: list[Request],
        batch: IterationBatch,
        x0: torch.Tensor,
        commit: torch.Tensor,
        confidence: torch.Tensor | None = None,
    ) -> InFlight:
        """Queue the one device-to-host copy of the iteration without waiting for it; with
        `confidence` ([R, B] float64), that copy carries it too."""
        rows = [x0, commit.long()]
        if confidence is not None:
            rows.append(confidence.view(torch.int64))
        both = torch.stack(rows)
        if not both.is_cuda:
            return cls(reqs, batch, x0, commit, both, None)
        host = torch.empty(both.shape, dtype=both.dtype, pin_memory=True)
        host.copy_(both, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return cls(reqs, batch, x0, commit, host, done)

    def wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """x0, commit and the confidences (None when not copied), on the host."""
        if self.done is not None:
            self.done.synchronize()
        host = self.host.numpy()
        return host[0], host[1], host[2].view(np.float64) if len(host) > 2 else None
