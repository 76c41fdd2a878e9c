"""Move one iteration's host-built metadata to the GPU in two copies.

Each copy from pageable host memory blocks the host until the GPU has drained its queue, so
thirty small `.to(device)` calls per iteration serialise the CPU with the GPU. Packing every
integer tensor into one pinned int64 buffer and every float into one pinned float64 buffer
makes the upload two asynchronous copies; the views are cast back on the device (exactly:
int32, bool and float32 / bf16 values survive the round trip through int64 / float64).
"""

from __future__ import annotations

import torch


def upload(tensors: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    if device.type == "cpu":
        return tensors
    out: dict[str, torch.Tensor] = {}
    for floating in (False, True):
        names = [n for n, t in tensors.items() if t.dtype.is_floating_point == floating]
        if not names:
            continue
        wide = torch.float64 if floating else torch.int64
        flat = [tensors[n].reshape(-1).to(wide) for n in names]
        buf = torch.cat(flat).pin_memory().to(device, non_blocking=True)
        for n, part in zip(names, buf.split([f.numel() for f in flat]), strict=True):
            t = tensors[n]
            out[n] = part.view(t.shape).to(t.dtype)
    return out
