"""The card's two ceilings and the linear layers against them: bf16 vs FP8, by token count.

    python benchmarks/linear.py --json linear.json          # on a GPU
    python benchmarks/linear.py --smoke                     # CPU: checks the script runs

Measures, in the same run, the copy bandwidth (a large device-to-device copy, bytes read plus
written) and the dense bf16 and FP8 matmul rates (8192^3 on random data), then times every
linear layer of the LLaDA-8B and Dream-7B shapes at M tokens: bf16 `F.linear`, and FP8 as the
engine runs it (per-token activation quantization + `torch._scaled_mm`). Each time is compared
with its roofline max(bytes / copy BW, FLOPs / matmul rate). Weights are rotated over enough
copies to exceed the L2 cache, so every timing reads its weights from HBM.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from roofline import Ceilings, linear_shapes, measure_ceilings, timed

from dllmserve.models.fp8 import Fp8Rows, fp8_linear, quantize_weight
from dllmserve.models.shapes import SHAPES

L2_BYTES = 60 * 2**20  # an H100/H200's L2 is 50/60 MB: rotate through more than this


def bench_layer(n: int, k: int, m: int, ceil: Ceilings, dev: torch.device) -> dict:
    """bf16 and FP8 (as the engine runs it: quantize x, then the GEMM) and, to place the FP8
    time, its parts: the quantization alone, the GEMM alone, the GEMM with fast accumulation,
    and the GEMM transposed (W x^T: the weight rows as the GEMM's M)."""
    copies = max(2, -(-2 * L2_BYTES // (n * k * 2)))
    ws = [torch.randn(n, k, device=dev, dtype=torch.bfloat16) / k**0.5 for _ in range(copies)]
    qs = [quantize_weight(w) for w in ws]
    x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
    rows = Fp8Rows.of(x)
    xq, sx = rows.data, rows.scale

    def run(fn, weights):
        def step():  # one replay walks every copy once: the weights come from HBM
            for w in weights:
                fn(w)

        return timed(step) / len(weights)

    def mm(w, fast=False):
        return torch._scaled_mm(xq, w.data.t(), scale_a=sx, scale_b=w.scale,
                                out_dtype=torch.bfloat16, use_fast_accum=fast)  # fmt: skip

    def mm_t(w):
        return torch._scaled_mm(w.data, xq.t(), scale_a=w.scale.t().contiguous(),
                                scale_b=sx.t().contiguous(), out_dtype=torch.bfloat16)  # fmt: skip

    bf16 = run(lambda w: F.linear(x, w), ws)
    fp8 = run(lambda w: fp8_linear(x, w), qs)
    parts = {
        "fp8_quant_ms": run(lambda w: Fp8Rows.of(x), qs[:1]),
        "fp8_gemm_ms": run(mm, qs),
        "fp8_gemm_fast_accum_ms": run(lambda w: mm(w, True), qs),
        "fp8_gemm_transposed_ms": run(mm_t, qs),
    }
    flop = 2 * m * n * k
    roof_bf16 = max(n * k * 2 / ceil.copy_tbs / 1e9, flop / ceil.bf16_tflops / 1e9)
    roof_fp8 = max(n * k / ceil.copy_tbs / 1e9, flop / ceil.fp8_tflops / 1e9)
    return {
        "n": n, "k": k, "m": m,
        "bf16_ms": bf16, "fp8_ms": fp8,
        "bf16_pct_roofline": 100 * roof_bf16 / bf16, "fp8_pct_roofline": 100 * roof_fp8 / fp8,
        "fp8_speedup": bf16 / fp8, **parts,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=["llada-8b", "dream-7b"])
    ap.add_argument("--tokens", type=int, nargs="+", default=[32, 64, 128, 384, 1024, 4096, 12288])
    ap.add_argument("--smoke", action="store_true", help="CPU: build the shapes and exit")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if a.smoke or not torch.cuda.is_available():
        for s in a.shapes:
            print(s, linear_shapes(SHAPES[s]))
        return
    dev = torch.device("cuda")
    ceil = measure_ceilings(dev)
    print(
        f"{torch.cuda.get_device_name()}: copy {ceil.copy_tbs:.2f} TB/s, "
        f"bf16 {ceil.bf16_tflops:.0f} TFLOP/s, fp8 {ceil.fp8_tflops:.0f} TFLOP/s",
        flush=True,
    )
    rows = []
    for s in a.shapes:
        for name, (n, k) in linear_shapes(SHAPES[s]).items():
            for m in a.tokens:
                r = {"shape": s, "layer": name, **bench_layer(n, k, m, ceil, dev)}
                rows.append(r)
                print(json.dumps(r), flush=True)
    print(
        f"\n{'shape':>9} {'layer':>8} {'M':>6} {'bf16 ms':>8} {'%roof':>6} {'fp8 ms':>8} "
        f"{'%roof':>6} {'speedup':>7} {'quant':>6} {'gemm':>6} {'fast':>6} {'W.xT':>6}"
    )
    for r in rows:
        print(
            f"{r['shape']:>9} {r['layer']:>8} {r['m']:>6} {r['bf16_ms']:>8.3f} "
            f"{r['bf16_pct_roofline']:>6.1f} {r['fp8_ms']:>8.3f} {r['fp8_pct_roofline']:>6.1f} "
            f"{r['fp8_speedup']:>7.2f} {r['fp8_quant_ms']:>6.3f} {r['fp8_gemm_ms']:>6.3f} "
            f"{r['fp8_gemm_fast_accum_ms']:>6.3f} {r['fp8_gemm_transposed_ms']:>6.3f}"
        )
    if a.json:
        a.json.write_text(
            json.dumps(
                {"card": torch.cuda.get_device_name(), "ceilings": vars(ceil), "layers": rows}
            )
        )


if __name__ == "__main__":
    main()
