"""FP8 (e4m3) weights for the linear layers: half the bytes of bf16, and Hopper's FP8 tensor cores.

Decoding at small batch reads every weight once per step, so its speed is the weights' size over
the memory bandwidth; FP8 halves that size. Each weight is quantized once, at load time, with one
scale per output channel (row of W); each activation row (token) is quantized on the fly with its
own scale, so a token's result does not depend on the other tokens of its batch. The product
runs on FP8 tensor cores with fp32 accumulation (`torch._scaled_mm`), both scales applied in its
epilogue. This is an approximation of the bf16 model (docs/design.md, "FP8 weights"); the LM
head, the embeddings and the norms stay in the model dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dllmserve import kernels
from dllmserve.errors import ValidationError
from dllmserve.kernels.reference import E4M3_MAX, FP8_MIN_SCALE


@dataclass(frozen=True)
class Fp8Weight:
    """W ≈ data * scale.T: data [N, K] float8_e4m3fn, scale [1, N] fp32 (one per output row)."""

    data: torch.Tensor
    scale: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.data.float() * self.scale.t()).to(dtype)


@dataclass(frozen=True)
class Fp8Rows:
    """Activations quantized per row (token) for an FP8 GEMM: x ≈ data * scale, with `dtype`
    the model dtype they came from (and the GEMM's result comes back in). The norms and SiLU
    that feed a GEMM produce them directly (one kernel instead of two)."""

    data: torch.Tensor  # [M, K] float8_e4m3fn
    scale: torch.Tensor  # [M, 1] fp32
    dtype: torch.dtype
    # the rows before quantization (model dtype), where a reader needs both: an MoE layer's
    # router reads them while its experts and shared expert take the FP8 rows
    values: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self.data.device

    @classmethod
    def of(cls, x: torch.Tensor, keep: bool = False) -> Fp8Rows:
        return cls(*kernels.quantize_rows(x), x.dtype, x if keep else None)


@dataclass(frozen=True)
class Fp8Experts:
    """The stacked weights of a layer's experts: expert e's W ≈ data[e] * scale[e][:, None],
    data [E, N, K] float8_e4m3fn, scale [E, N] fp32 (per expert, one per output row), the
    layout `kernels.fused_moe` takes."""

    data: torch.Tensor
    scale: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    def expert(self, e: int) -> Fp8Weight:
        return Fp8Weight(data=self.data[e], scale=self.scale[e][None])


def _quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 data and fp32 scales [..., N, 1] of the rows of w [..., N, K] (one scale a row,
    round to nearest, ties to even)."""
    wf = w.float()
    scale = (wf.abs().amax(dim=-1, keepdim=True) / E4M3_MAX).clamp(min=FP8_MIN_SCALE)
    data = (wf / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return data.contiguous(), scale


def quantize_weight(w: torch.Tensor) -> Fp8Weight:
    """Per-output-channel e4m3 quantization of a [N, K] weight."""
    data, scale = _quantize_rows(w)
    return Fp8Weight(data=data, scale=scale.t().contiguous())


def quantize_experts(w: torch.Tensor) -> Fp8Experts:
    """`quantize_weight`'s rule for each expert of a stacked [E, N, K] weight."""
    data, scale = _quantize_rows(w)
    return Fp8Experts(data=data, scale=scale[..., 0].contiguous())


def check_fp8_support(device: torch.device, quantization: str = "fp8") -> None:
    """FP8 tensor cores need compute capability 8.9 (Ada) or 9.0 (Hopper); the CPU simulates."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        name = torch.cuda.get_device_name(device)
        raise ValidationError(
            "quantization",
            f"{quantization!r} needs a GPU with FP8 tensor cores (compute capability >= 8.9); "
            f"{name} has {torch.cuda.get_device_capability(device)}",
        )


def fp8_linear(
    x: torch.Tensor | Fp8Rows, w: Fp8Weight, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x [M, K] (CUDA; model dtype, or already quantized) times W.T on FP8 tensor cores; the
    result in the activations' model dtype."""
    rows = x if isinstance(x, Fp8Rows) else Fp8Rows.of(x)
    # per-row scales need a bf16 result (cuBLAS's FP8 epilogue); other model dtypes cast after
    out = torch._scaled_mm(
        rows.data, w.data.t(), scale_a=rows.scale, scale_b=w.scale, out_dtype=torch.bfloat16
    ).to(rows.dtype)
    return out if bias is None else out + bias


def dequantized_operands(
    x: torch.Tensor | Fp8Rows, w: Fp8Weight
) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
    """The CPU reference's fp32 operands: x quantized per row exactly as on the GPU, and W, both
    dequantized (their fp32 product is what the FP8 GEMM computes, up to summation order), and
    the dtype the result is returned in."""
    rows = x if isinstance(x, Fp8Rows) else Fp8Rows.of(x)
    return rows.data.float() * rows.scale, w.dequantize(), rows.dtype
