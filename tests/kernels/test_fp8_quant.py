"""Per-token e4m3 quantization: the Triton kernel writes the reference's bits exactly."""

from __future__ import annotations

import pytest
import torch
from kernel_testlib import DEVICE, DTYPES, randn

from dllmserve.kernels import quantize_rows, reference


def _rows(gen: torch.Generator, m: int, k: int, dtype: torch.dtype) -> torch.Tensor:
    """Rows of very different magnitudes, an all-zero row and values in e4m3's subnormal range
    after scaling (tiny next to their row's maximum)."""
    x = randn(gen, m, k, dtype=torch.float32) * torch.logspace(-3, 3, m, device=DEVICE).view(-1, 1)
    x[0] = 0.0
    x[1, : k // 2] *= 1e-4
    return x.to(DEVICE, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [16, 100, 4096 + 48])  # one tile, a ragged tile, several tiles
def test_quantize_rows_matches_reference_bits(dtype, k):
    gen = torch.Generator().manual_seed(k)
    x = _rows(gen, 6, k, dtype)
    poisoned = torch.full((6, k), float("nan"), device=DEVICE).to(torch.float8_e4m3fn)
    q, scale = quantize_rows(x)
    q_ref, scale_ref = reference.quantize_rows(x)
    assert q.dtype == torch.float8_e4m3fn and q.shape == poisoned.shape
    assert scale.shape == (6, 1) and scale.dtype == torch.float32
    torch.testing.assert_close(scale, scale_ref, rtol=0, atol=0)
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))
    assert not q.float().isnan().any()


def test_quantize_rows_reads_strided_rows():
    gen = torch.Generator().manual_seed(7)
    wide = randn(gen, 5, 96, dtype=DTYPES[0])
    q, scale = quantize_rows(wide[:, 16:80])
    q_ref, scale_ref = reference.quantize_rows(wide[:, 16:80].contiguous())
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))
    torch.testing.assert_close(scale, scale_ref, rtol=0, atol=0)


def test_reference_reconstructs_within_e4m3_precision():
    """e4m3 keeps 3 mantissa bits: a normal value is off by at most 2^-4 of itself."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(8, 512, generator=gen)
    q, scale = reference.quantize_rows(x)
    back = q.float() * scale
    assert q.float().abs().amax(dim=1).eq(448.0).all()  # each row's largest value maps to 448
    normal = x.abs() >= scale * 2.0**-6
    rel = ((back - x).abs() / x.abs())[normal]
    assert rel.max() <= 2.0**-4 + 1e-6
