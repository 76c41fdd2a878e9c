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
    host: torch.Tensor  # [2, R, B] int64, pinned on CUDA, filled asynchronously
    done: torch.cuda.Event | None

    @classmethod
    def start(
        cls, reqs: list[Request], batch: IterationBatch, x0: torch.Tensor, commit: torch.Tensor
    ) -> InFlight:
        """Queue the one device-to-host copy of the iteration without waiting for it."""
        both = torch.stack([x0, commit.long()])
        if not both.is_cuda:
            return cls(reqs, batch, x0, commit, both, None)
        host = torch.empty(both.shape, dtype=both.dtype, pin_memory=True)
        host.copy_(both, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return cls(reqs, batch, x0, commit, host, done)

    def wait(self) -> np.ndarray:
        if self.done is not None:
            self.done.synchronize()
        return self.host.numpy()
