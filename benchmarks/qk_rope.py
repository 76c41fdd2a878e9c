"""The attention inputs after the qkv GEMM: the per-head q/k RMSNorm and (partial) RoPE in one
launch (`rope_heads` with norms) against the unfused path the model ran before (a copy of q and
of k, the norm kernel on each, then the PyTorch rotary), at the shapes of the models that have
a q/k norm (LLaDA2.0-mini, LLaDA-MoE) and, without the norm, LLaDA-8B's (which already ran the
RoPE kernel: its "unfused" is the PyTorch rotary, its point the kernel's tiling and bandwidth).

    python benchmarks/qk_rope.py --json out.json    # on the GPU
    python benchmarks/qk_rope.py --smoke            # tiny shapes on CPU (Triton interpreter)

For each (model, tokens T) it reports microseconds per layer of both paths (medians of
triton.testing.do_bench: launches included, as an eager forward pays them; and of
do_bench_cudagraph: GPU time only, as a graph replay pays it), the fused kernel's GPU time at
each tiling (heads per program; the engine uses the default), its bytes (q and k read from the
qkv output once and written once) and bandwidth, and the largest difference between the two
paths' outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import provenance  # noqa: E402
import triton.testing  # noqa: E402

from dllmserve.kernels.elementwise import rope_heads  # noqa: E402
from dllmserve.models.layers import Rotary, rms_norm  # noqa: E402
from dllmserve.models.shapes import SHAPES  # noqa: E402

HEADS_SWEEP = (1, 2, 4, 8, 16)


def unfused(qkv, pos, rotary: Rotary, nh: int, nkv: int, norms):
    """The path before the fusion: q and k copied out of the qkv rows, each normed by the
    norm kernel, then rotated by the PyTorch rotary (the model's `_clipped_qkv` without clip);
    without norms, the PyTorch rotary on the q and k columns."""
    hd = rotary.head_dim
    q, k, _ = qkv.split([nh * hd, nkv * hd, nkv * hd], dim=-1)
    if norms is not None:
        q = rms_norm(q.reshape(-1, hd), norms[0], norms[2])
        k = rms_norm(k.reshape(-1, hd), norms[1], norms[2])
    return rotary(q.reshape(-1, nh, hd), pos), rotary(k.reshape(-1, nkv, hd), pos)


def case(shape: str, T: int, dev: torch.device, dtype: torch.dtype, smoke: bool) -> dict:
    cfg = SHAPES[shape]
    nh, nkv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    g = torch.Generator().manual_seed(T)
    qkv = torch.randn(T, (nh + 2 * nkv) * hd, generator=g).to(dev, dtype)
    pos = torch.randint(0, 512, (T,), generator=g).to(dev)
    rotary = Rotary(hd, cfg.rope_theta, 1024, dev, cfg.rope_in_fp32, cfg.rope_dim)
    norms = None
    if cfg.qk_norm:
        w = torch.rand(2, hd, generator=g).to(dev, dtype) + 0.5
        norms = (w[0], w[1], cfg.rms_eps)
    qk_norms = None if norms is None else (norms[0], norms[1], nh, norms[2])

    def old():
        return unfused(qkv, pos, rotary, nh, nkv, norms)

    def new():
        qk = rope_heads(qkv, nh + nkv, hd, pos, rotary.cos, rotary.sin, rotary.in_fp32, qk_norms)
        return qk[:, :nh], qk[:, nh:]

    def tiled(heads: int):
        return rope_heads(qkv, nh + nkv, hd, pos, rotary.cos, rotary.sin, rotary.in_fp32,
                          qk_norms, heads_per_program=heads)  # fmt: skip

    (oq, ok), (nq, nk) = old(), new()
    diff = max(
        (oq.float() - nq.float()).abs().max().item(), (ok.float() - nk.float()).abs().max().item()
    )
    row = {"shape": shape, "T": T, "qk_norm": cfg.qk_norm, "rot_dim": cfg.rope_dim,
           "head_dim": hd, "max_abs_diff": diff}  # fmt: skip
    if smoke:
        return row
    fused_bytes = 2 * T * (nh + nkv) * hd * qkv.element_size()
    for name, fn in (("unfused", old), ("fused", new)):
        row[f"{name}_us"] = 1e3 * triton.testing.do_bench(fn, return_mode="median")
        graph_ms = triton.testing.do_bench_cudagraph(fn, return_mode="median")
        row[f"{name}_graph_us"] = 1e3 * graph_ms
    for heads in HEADS_SWEEP:  # the kernel's tiling, GPU time only
        ms = triton.testing.do_bench_cudagraph(lambda h=heads: tiled(h), return_mode="median")
        row[f"fused_graph_us_heads{heads}"] = 1e3 * ms
    row["fused_bytes"] = fused_bytes
    row["fused_gb_s"] = fused_bytes / row["fused_graph_us"] / 1e3
    row["speedup_graph"] = row["unfused_graph_us"] / row["fused_graph_us"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=["llada2-mini", "llada-moe-7b", "llada-8b"])
    # 32: a block at batch 1; 384: prompt 128 + gen 256 at batch 1; 1024 / 12288: the same at 32
    ap.add_argument("--tokens", type=int, nargs="+", default=[32, 384, 1024, 12288])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (interpreter)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if a.smoke:
        a.shapes, a.tokens = ["tiny-moe", "tiny"], [3]
    dev = torch.device("cpu" if a.smoke else "cuda")
    dtype = torch.float32 if a.smoke else torch.bfloat16  # the interpreter mishandles bf16
    rows = []
    for shape in a.shapes:
        for T in a.tokens:
            rows.append(case(shape, T, dev, dtype, a.smoke))
            print(json.dumps(rows[-1]), flush=True)
    if a.json:
        card = "cpu" if a.smoke else torch.cuda.get_device_name()
        doc = {"card": card, "commit": provenance.commit(), "args": vars(a) | {"json": str(a.json)},
               "rows": rows}  # fmt: skip
        a.json.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
