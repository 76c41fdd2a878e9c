"""The fused MoE layer (kernels.fused_moe) on the GPU against a per-expert PyTorch loop,
torch._grouped_mm and the card's rooflines, at the LLaDA-MoE-7B-A1B and LLaDA2.0-mini shapes.

    python benchmarks/moe.py --json moe.json     # on a GPU
    python benchmarks/moe.py --smoke             # CPU: tiny shapes, Triton interpreter

Measures, in the same run, the copy bandwidth and the bf16/FP8 matmul rates (roofline.py), then
for T tokens routed uniformly at random to k experts: the fused layer in bf16 and FP8
(CUDA-graph replays, align step and activation quantization included), the per-expert loop as
HF models run it (eager: it syncs with the host), and torch._grouped_mm (bf16, sorted by
torch ops, graph-replayed). The byte roofline counts the weights of the experts the routing
actually touches (what a small batch must read); the FLOP roofline 2 * T * k * 3 * d * I.
Each time is also checked against the fp32 per-expert reference (relative error).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import provenance  # noqa: E402
from roofline import Ceilings, eager_ms, measure_ceilings, timed  # noqa: E402

from dllmserve import kernels  # noqa: E402
from dllmserve.kernels.moe_align import align_rows  # noqa: E402
from dllmserve.models.fp8 import Fp8Weight, fp8_linear, quantize_experts  # noqa: E402

# (hidden d, expert intermediate I, experts E, top-k)
SHAPES = {"llada-moe-7b": (2048, 1024, 64, 8), "llada2-mini": (2048, 512, 256, 8)}
SMOKE_SHAPES = {"tiny": (64, 32, 6, 2)}


def routing(t: int, e: int, k: int, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniformly random top-k (softmax weights over random logits, as a softmax router)."""
    logits = torch.randn(t, e, device=dev)
    w, ids = torch.softmax(logits, dim=-1).topk(k, dim=-1)
    return ids.to(torch.int32), w.float()


def loop_moe(x, w_gu, w_d, ids, weights, fp8=None) -> torch.Tensor:
    """The per-expert loop of the HF models: gather each expert's tokens, two linears,
    index_add the weighted result (fp8: per-expert `fp8_linear`, as the dense FP8 layers)."""
    i = w_d.shape[2] if fp8 is None else fp8[1][0].shape[1]
    out = torch.zeros(x.shape[0], x.shape[1], device=x.device, dtype=torch.float32)
    flat = ids.reshape(-1).long()
    order = torch.argsort(flat)
    n_experts = len(fp8[0]) if fp8 is not None else w_gu.shape[0]
    counts = torch.bincount(flat, minlength=n_experts).tolist()  # the host sync
    start = 0
    for e, c in enumerate(counts):
        if c == 0:
            continue
        rows = order[start : start + c]
        start += c
        tok = rows // ids.shape[1]
        if fp8 is None:
            gu = F.linear(x[tok], w_gu[e])
            y = F.linear(F.silu(gu[:, :i]) * gu[:, i:], w_d[e])
        else:
            gu = fp8_linear(x[tok], fp8[0][e])
            y = fp8_linear(F.silu(gu[:, :i]) * gu[:, i:], fp8[1][e])
        out.index_add_(0, tok, y.float() * weights.reshape(-1)[rows, None])
    return out.to(x.dtype)


def grouped_mm_moe(x, w_gu, w_d, ids, weights) -> torch.Tensor:
    """torch._grouped_mm: rows sorted by expert (torch ops, no host sync), one grouped GEMM
    for gate/up, SiLU-and-mul, one for down, then the weighted sum over k."""
    t, k = ids.shape
    i = w_d.shape[2]
    flat = ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    ends = torch.searchsorted(flat[order], torch.arange(1, w_gu.shape[0] + 1, device=x.device,
                                                         dtype=flat.dtype))  # fmt: skip
    offs = ends.to(torch.int32)
    gu = torch._grouped_mm(x[order // k], w_gu.transpose(1, 2), offs=offs)
    y = torch._grouped_mm(F.silu(gu[:, :i]) * gu[:, i:], w_d.transpose(1, 2), offs=offs)
    y = y.float() * weights.reshape(-1)[order, None]
    out = torch.zeros(t * k, x.shape[1], device=x.device).index_copy_(0, order, y)
    return out.view(t, k, -1).sum(1).to(x.dtype)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def kernel_breakdown(fn: Callable[[], object], reps: int = 5) -> dict[str, float]:
    """Milliseconds per call of each GPU kernel `fn` launches (torch profiler, eager)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    out = {}
    for ev in prof.key_averages():
        us = getattr(ev, "device_time_total", 0) or getattr(ev, "cuda_time_total", 0)
        if us > 0:
            out[ev.key[:60]] = round(us / reps / 1000, 4)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def inputs(shape: tuple[int, int, int, int], t: int, dev: torch.device) -> dict:
    d, i, e, k = shape
    dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    x = torch.randn(t, d, device=dev).to(dt)
    w_gu = (torch.randn(e, 2 * i, d, device=dev) / d**0.5).to(dt)
    w_d = (torch.randn(e, d, i, device=dev) / i**0.5).to(dt)
    q_gu, q_d = quantize_experts(w_gu), quantize_experts(w_d)
    ids, weights = routing(t, e, k, dev)
    return dict(x=x, w_gu=w_gu, w_d=w_d, q_gu=q_gu.data, s_gu=q_gu.scale, q_d=q_d.data,
                s_d=q_d.scale, ids=ids, weights=weights)  # fmt: skip


def bench_case(name: str, t: int, ceil: Ceilings | None, dev: torch.device) -> dict:
    """One shape at T tokens: errors against the reference, then (GPU) times and rooflines."""
    shape = (SHAPES | SMOKE_SHAPES)[name]
    d, i, e, k = shape
    a = inputs(shape, t, dev)
    x, ids, tw = a["x"], a["ids"], a["weights"]
    fp8 = {"w_gate_up_scale": a["s_gu"], "w_down_scale": a["s_d"]}
    fused = lambda: kernels.fused_moe(x, a["w_gu"], a["w_d"], ids, tw)  # noqa: E731
    fused8 = lambda: kernels.fused_moe(x, a["q_gu"], a["q_d"], ids, tw, **fp8)  # noqa: E731
    ref = kernels.reference.fused_moe(x.float(), a["w_gu"].float(), a["w_d"].float(), ids, tw)
    ref8 = kernels.reference.fused_moe(x, a["q_gu"], a["q_d"], ids, tw, **fp8)
    w8 = [[Fp8Weight(a[q][j], a[s][j][None]) for j in range(e)] for q, s in
          (("q_gu", "s_gu"), ("q_d", "s_d"))]  # fmt: skip
    touched = ids.unique().numel()
    row = {"shape": name, "d": d, "I": i, "E": e, "k": k, "T": t, "experts_touched": touched,
           "err_fused_bf16_vs_fp32": rel_err(fused(), ref),
           "err_fused_fp8_vs_fp8_reference": rel_err(fused8(), ref8),
           "err_fused_fp8_vs_fp32": rel_err(fused8(), ref)}  # fmt: skip
    row["err_loop_vs_fp32"] = rel_err(loop_moe(x, a["w_gu"], a["w_d"], ids, tw), ref)
    if ceil is None:  # the smoke run: the alternatives compute the same thing
        row["err_grouped_mm_vs_fp32"] = rel_err(
            grouped_mm_moe(x, a["w_gu"], a["w_d"], ids, tw), ref
        )
        return row
    row["fused_bf16_ms"] = timed(fused)
    row["fused_fp8_ms"] = timed(fused8)
    bm = kernels.moe_kernel.block_m_for(t * k, e)
    row["align_ms"] = timed(lambda: align_rows(ids, e, bm))
    row["loop_bf16_ms"] = eager_ms(lambda: loop_moe(x, a["w_gu"], a["w_d"], ids, tw), reps=10)
    row["loop_fp8_ms"] = eager_ms(lambda: loop_moe(x, None, None, ids, tw, w8), reps=10)
    try:
        gmm = lambda: grouped_mm_moe(x, a["w_gu"], a["w_d"], ids, tw)  # noqa: E731
        row["err_grouped_mm_vs_fp32"] = rel_err(gmm(), ref)
        row["grouped_mm_bf16_ms"] = timed(gmm)
    except (RuntimeError, AttributeError) as err:  # not in this torch, or not for this card
        row["grouped_mm_error"] = str(err).splitlines()[0][:200]
    flop = 2 * t * k * 3 * d * i
    for kind, elem, rate in (("bf16", 2, ceil.bf16_tflops), ("fp8", 1, ceil.fp8_tflops)):
        byte_ms = touched * 3 * d * i * elem / (ceil.copy_tbs * 1e9)
        flop_ms = flop / (rate * 1e9)
        row[f"byte_roof_{kind}_ms"], row[f"flop_roof_{kind}_ms"] = byte_ms, flop_ms
        row[f"pct_roof_{kind}"] = 100 * max(byte_ms, flop_ms) / row[f"fused_{kind}_ms"]
    row["kernels_bf16_ms"] = kernel_breakdown(fused)
    row["kernels_fp8_ms"] = kernel_breakdown(fused8)
    return row


COLUMNS = [  # (header, key, format)
    ("shape", "shape", ">13"), ("T", "T", ">5"), ("exp", "experts_touched", ">4"),
    ("bf16", "fused_bf16_ms", ">7.3f"), ("%roof", "pct_roof_bf16", ">6.1f"),
    ("loop", "loop_bf16_ms", ">7.3f"), ("gmm", "grouped_mm_bf16_ms", ">7.3f"),
    ("fp8", "fused_fp8_ms", ">7.3f"), ("%roof", "pct_roof_fp8", ">6.1f"),
    ("loop8", "loop_fp8_ms", ">7.3f"), ("byte", "byte_roof_bf16_ms", ">6.3f"),
    ("flop", "flop_roof_bf16_ms", ">6.3f"), ("align", "align_ms", ">6.3f"),
]  # fmt: skip


def table(rows: list[dict]) -> None:
    """Milliseconds (bf16 / fp8 fused, loops, grouped_mm, rooflines) and % of roofline."""
    print(" ".join(f"{h:{f.split('.')[0]}}" for h, _, f in COLUMNS))
    for r in rows:
        print(" ".join(f"{r.get(k, float('nan')):{f}}" for _, k, f in COLUMNS))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES))
    ap.add_argument("--tokens", type=int, nargs="+", default=[32, 2048])
    ap.add_argument("--smoke", action="store_true", help="CPU: tiny shapes, errors only")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    torch.manual_seed(0)
    if a.smoke:
        kernels.force_triton = True
        rows = [bench_case("tiny", t, None, torch.device("cpu")) for t in (1, 9)]
        print(json.dumps(rows))
        if a.json:
            a.json.write_text(json.dumps({"commit": provenance.commit(), "rows": rows}))
        return
    dev = torch.device("cuda")
    ceil = measure_ceilings(dev)
    print(f"{torch.cuda.get_device_name()}: copy {ceil.copy_tbs:.2f} TB/s, "
          f"bf16 {ceil.bf16_tflops:.0f} TFLOP/s, fp8 {ceil.fp8_tflops:.0f} TFLOP/s",
          flush=True)  # fmt: skip
    import triton

    doc = {"card": torch.cuda.get_device_name(), "commit": provenance.commit(),
           "torch": torch.__version__, "triton": triton.__version__, "ceilings": vars(ceil),
           "rows": []}  # fmt: skip
    for name in a.shapes:
        for t in a.tokens:
            row = bench_case(name, t, ceil, dev)
            doc["rows"].append(row)
            print(json.dumps(row), flush=True)
            if a.json:  # rewritten after every case: a cut-off run keeps what it measured
                a.json.write_text(json.dumps(doc, indent=1))
    table(doc["rows"])


if __name__ == "__main__":
    main()
