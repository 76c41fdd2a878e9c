"""Shared inputs and tolerances for the kernel tests (CPU interpreter or GPU)."""

from __future__ import annotations

import torch

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
# The interpreter mishandles bf16, so CPU runs fp32 and fp16; the GPU runs the serving dtype.
DTYPES = [torch.bfloat16, torch.float32] if ON_GPU else [torch.float32, torch.float16]
ATOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def cu(lengths: list[int]) -> torch.Tensor:
    """Cumulative offsets [len+1] int32 on DEVICE."""
    out = [0]
    for n in lengths:
        out.append(out[-1] + n)
    return torch.tensor(out, dtype=torch.int32, device=DEVICE)


def randn(gen: torch.Generator, *shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float32).to(DEVICE, dtype)


def randint(gen: torch.Generator, *shape: int, dtype: torch.dtype) -> torch.Tensor:
    """Small integers: every dot product and mean over a power-of-two count is exact."""
    return torch.randint(-3, 4, shape, generator=gen).to(DEVICE, dtype)


def page_table(gen: torch.Generator, needed: list[int], num_pages: int) -> torch.Tensor:
    """Distinct random pages for each request's needed entries; entries past them hold an
    out-of-range page so a kernel that reads them faults (GPU) or fails the comparison."""
    width = max([1, *needed])
    table = torch.full((len(needed), width), 1 << 30, dtype=torch.int32)
    perm = torch.randperm(num_pages, generator=gen)
    used = 0
    for r, n in enumerate(needed):
        table[r, :n] = perm[used : used + n]
        used += n
    return table.to(DEVICE)
