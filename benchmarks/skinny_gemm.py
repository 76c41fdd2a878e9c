"""The skinny-M Triton GEMM (kernels/skinny_gemm.py) against cuBLAS and `torch._scaled_mm`, in
the same run, on every linear layer of the LLaDA-8B and Dream-7B shapes at M = 1 .. 64 rows.

    python benchmarks/skinny_gemm.py --json skinny.json      # on a GPU (about 3 minutes)
    python benchmarks/skinny_gemm.py --smoke --json s.json   # CPU: the kernel in Triton's
                                                             # interpreter on the tiny shape

For each (layer, M): bf16 `F.linear` (cuBLAS) and the kernel on bf16 weights; FP8 as the engine
runs it (`fp8_linear`: per-token quantization + `_scaled_mm`), the kernel on the same e4m3
operands (quantization included: "w8a8"), and the kernel with e4m3 weights and bf16
activations ("w8": no activation quantization). The kernel is first tuned on the layer's shape
(`skinny_gemm.tune`: its candidates timed with the L2 evicted). Every time is the median of
CUDA-graph replays rotating over enough weight copies to exceed the L2 (weights from HBM), and
is compared with its byte roofline (weight bytes / the copy bandwidth measured in this run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from roofline import linear_shapes

from dllmserve.models.shapes import SHAPES

L2_BYTES = 60 * 2**20  # an H100/H200's L2 is 50/60 MB: rotate through more than this
LAYERS = ("qkv", "o", "gate_up", "down")  # the LM head stays bf16 and is not a skinny GEMM


def gpu_rows(n: int, k: int, tokens: list[int], ceil, flush: torch.Tensor) -> list[dict]:
    """Every variant at each M of one [N, K] layer, on the same weight copies."""
    from dllmserve.models.fp8 import quantize_weight

    copies = max(2, -(-2 * L2_BYTES // (n * k)))  # even the e4m3 copies: twice the L2
    ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5 for _ in range(copies)]
    qs = [quantize_weight(w) for w in ws]
    out = []
    for m in tokens:
        try:
            out.append(gpu_row(m, ws, qs, ceil, flush))
        except Exception as e:  # one device call measures everything: note it and go on
            out.append({"n": n, "k": k, "m": m, "error": repr(e)[:1000]})
    return out


def gpu_row(m: int, ws: list, qs: list, ceil, flush: torch.Tensor) -> dict:
    """The kernel tuned for each kind at M rows, then every variant timed (module docstring)."""
    from roofline import timed

    from dllmserve.kernels import skinny_gemm as sg
    from dllmserve.models.fp8 import Fp8Rows, fp8_linear

    n, k = ws[0].shape
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    r8 = Fp8Rows.of(x)
    bf = {"out_dtype": torch.bfloat16}
    cfg16, _ = sg.tune(x, ws[0], flush=flush)
    cfg_w8, _ = sg.tune(x, qs[0].data, w_scale=qs[0].scale, flush=flush)
    cfg_a8, _ = sg.tune(
        r8.data, qs[0].data, x_scale=r8.scale, w_scale=qs[0].scale, flush=flush, **bf
    )

    def w8a8(q):
        r = Fp8Rows.of(x)
        return sg.skinny_linear(
            r.data, q.data, x_scale=r.scale, w_scale=q.scale, config=cfg_a8, **bf
        )

    def run(fn, weights):
        def step():  # one replay walks every copy once: the weights come from HBM
            for w in weights:
                fn(w)

        return timed(step) / len(weights)

    ms = {
        "cublas_bf16_ms": run(lambda w: F.linear(x, w), ws),
        "triton_bf16_ms": run(lambda w: sg.skinny_linear(x, w, config=cfg16), ws),
        "scaled_mm_fp8_ms": run(lambda q: fp8_linear(x, q), qs),
        "triton_w8a8_ms": run(w8a8, qs),
        "triton_w8_ms": run(
            lambda q: sg.skinny_linear(x, q.data, w_scale=q.scale, config=cfg_w8), qs
        ),
    }
    floor = {"bf16": n * k * 2 / ceil.copy_tbs / 1e9, "fp8": n * k / ceil.copy_tbs / 1e9}
    pct = {
        name.replace("_ms", "_pct_roofline"): 100 * floor["bf16" if "bf16" in name else "fp8"] / t
        for name, t in ms.items()
    }
    return {
        "n": n, "k": k, "m": m, **ms, **pct,
        "bf16_speedup": ms["cublas_bf16_ms"] / ms["triton_bf16_ms"],
        "w8a8_speedup": ms["scaled_mm_fp8_ms"] / ms["triton_w8a8_ms"],
        "w8_speedup_vs_scaled_mm": ms["scaled_mm_fp8_ms"] / ms["triton_w8_ms"],
        "configs": {"bf16": vars(cfg16), "w8": vars(cfg_w8), "w8a8": vars(cfg_a8)},
    }  # fmt: skip


def smoke_rows(n: int, k: int, tokens: list[int]) -> list[dict]:
    """CPU: the kernel's three kinds in the interpreter against the library's results."""
    from dllmserve.kernels.skinny_gemm import skinny_linear
    from dllmserve.models.fp8 import Fp8Rows, dequantized_operands, quantize_weight

    w = torch.randn(n, k) / k**0.5
    q = quantize_weight(w)
    out = []
    for m in tokens:
        x = torch.randn(m, k)
        r8 = Fp8Rows.of(x)
        xd, wd, _ = dequantized_operands(r8, q)
        errs = {
            "bf16": skinny_linear(x, w) - F.linear(x, w),
            "w8": skinny_linear(x, q.data, w_scale=q.scale) - F.linear(x, q.dequantize()),
            "w8a8": skinny_linear(
                r8.data, q.data, x_scale=r8.scale, w_scale=q.scale, out_dtype=torch.float32
            )
            - xd @ wd.t(),  # fmt: skip
        }
        err = {f"{name}_max_err": e.abs().max().item() for name, e in errs.items()}
        out.append({"n": n, "k": k, "m": m, **err})
    return out


def summary(rows: list[dict]) -> dict:
    """Per variant, over all rows and per M: the geometric-mean speedup over the library, the
    layers the kernel wins, and the mean share of the byte roofline; and the rows that failed."""
    ok = [r for r in rows if "error" not in r]
    by_m = {f"m={m}": [r for r in ok if r["m"] == m] for m in sorted({r["m"] for r in ok})}
    out: dict = {"errors": len(rows) - len(ok)}
    for key in ("bf16_speedup", "w8a8_speedup", "w8_speedup_vs_scaled_mm"):
        out[key] = {name: _geomean([r[key] for r in g]) for name, g in {"all": ok, **by_m}.items()}
    pct = [key for key in (ok[0] if ok else {}) if key.endswith("_pct_roofline")]
    out["mean_pct_roofline"] = {
        key: {name: sum(r[key] for r in g) / len(g) for name, g in by_m.items()} for key in pct
    }
    return out


def _geomean(vals: list[float]) -> dict:
    gm = float(torch.tensor(vals).log().mean().exp())
    return {"geomean": gm, "wins": sum(v > 1 for v in vals), "of": len(vals)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=None)
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--smoke", action="store_true", help="CPU: the interpreter on the tiny shape")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    smoke = a.smoke or not torch.cuda.is_available()
    shapes = a.shapes or (["tiny"] if smoke else ["llada-8b", "dream-7b"])
    doc: dict = {"args": {"shapes": shapes, "tokens": a.tokens, "smoke": smoke}}
    if smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernel module imports triton
        doc["layers"] = [
            {"shape": s, "layer": name, **r}
            for s in shapes
            for name, (n, k) in linear_shapes(SHAPES[s]).items()
            if name in LAYERS
            for r in smoke_rows(n, k, a.tokens)
        ]
        print("\n".join(json.dumps(r) for r in doc["layers"]))
    else:
        doc["layers"] = gpu_run(shapes, a.tokens, doc)  # printed as they come
        doc["summary"] = summary(doc["layers"])
        print(json.dumps({"summary": doc["summary"]}), flush=True)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(doc, indent=1))


def gpu_run(shapes: list[str], tokens: list[int], doc: dict) -> list[dict]:
    from roofline import measure_ceilings

    from dllmserve.kernels.skinny_gemm import l2_flush

    dev = torch.device("cuda")
    ceil = measure_ceilings(dev)
    doc.update(card=torch.cuda.get_device_name(), ceilings=vars(ceil))
    print(f"{doc['card']}: copy {ceil.copy_tbs:.2f} TB/s", file=sys.stderr, flush=True)
    flush = l2_flush(dev)
    rows = []
    start = time.perf_counter()
    for s in shapes:
        for name, (n, k) in linear_shapes(SHAPES[s]).items():
            if name in LAYERS:
                for r in gpu_rows(n, k, tokens, ceil, flush):
                    elapsed = round(time.perf_counter() - start, 1)
                    rows.append({"shape": s, "layer": name, **r, "elapsed_s": elapsed})
                    print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    main()
