"""Kernel benchmark: REUSE / FULL attention, selection (and sampling) vs the card's ceilings and
the library kernels (torch SDPA flash, FlexAttention, torch varlen_attn), at LLaDA-8B and
Dream-7B shapes.

    python benchmarks/kernels.py --json out.json     # on the GPU
    python benchmarks/kernels.py --smoke             # tiny shapes on CPU (Triton interpreter)

Times are medians of triton.testing.do_bench (CUDA events); bytes count what a kernel must
move at least (kept + fresh K/V, queries, output), FLOPs the two attention matmuls.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch

SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import provenance  # noqa: E402
import triton  # noqa: E402
import triton.testing  # noqa: E402

from dllmserve.kernels import reference  # noqa: E402
from dllmserve.kernels.reuse_kernel import reuse_attention  # noqa: E402
from dllmserve.kernels.sampling import sample_tokens  # noqa: E402
from dllmserve.kernels.selection import select_and_store  # noqa: E402
from dllmserve.kernels.selection_args import SelectionArgs  # noqa: E402
from dllmserve.kernels.varlen_kernel import varlen_attention  # noqa: E402

MODELS = {"llada": (32, 32, 128), "dream": (28, 4, 128)}
DEV = torch.device("cuda" if torch.cuda.is_available() and not SMOKE else "cpu")
DT = torch.bfloat16 if DEV.type == "cuda" else torch.float32
RESULTS: list[dict] = []
JSON_PATH: list[str] = []  # rows are rewritten after every case, so a cut-off run keeps them


def bench(fn: Callable[[], object]) -> float:
    """Median milliseconds (one timed call on CPU, where only correctness of the run matters)."""
    if DEV.type != "cuda":
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")


def graph_bench(fns: list[Callable[[], object]]) -> float:
    """Median ms per call of CUDA-graph replays that cycle through fns (one per copy of the
    inputs, so that small working sets are not served from L2). This is kernel time without
    Python launch cost, as in the engine's graph-captured REUSE steps."""
    if DEV.type != "cuda":
        return bench(fns[0])
    for fn in fns:
        fn()
    reps = len(fns) * max(1, 20 // len(fns))
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(reps):
            fns[i % len(fns)]()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(7):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / reps)
    return statistics.median(times)


def copies_for(nbytes: int) -> int:
    """Input copies whose total is about 4x the L2 cache (capped at 32)."""
    if DEV.type != "cuda":
        return 1
    l2 = torch.cuda.get_device_properties(DEV).L2_cache_size
    return int(min(32, max(1, math.ceil(4 * l2 / max(1, nbytes)))))


def try_bench(fn: Callable[[], object], graph: list[Callable[[], object]] | None = None):
    """Times a library baseline (in a graph when given); None and a note when it fails."""
    try:
        return graph_bench(graph) if graph else bench(fn)
    except Exception as e:  # a baseline missing on this torch build is reported, not fatal
        print(f"    baseline failed: {type(e).__name__}: {str(e)[:120]}", flush=True)
        return None


def record(kind: str, **row) -> None:
    row["kind"] = kind
    RESULTS.append(row)
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
    print("  " + json.dumps(shown), flush=True)
    for path in JSON_PATH:
        with open(path, "w") as f:
            json.dump(RESULTS, f, indent=1)


def ceilings() -> tuple[float, float]:
    """Measured copy bandwidth (TB/s, read + write) and bf16 matmul rate (TFLOP/s)."""
    if DEV.type != "cuda":
        return 1.0, 1.0
    x = torch.empty(1 << 30, dtype=torch.uint8, device=DEV)
    y = torch.empty_like(x)
    ms = bench(lambda: y.copy_(x))
    copy = 2 * x.numel() / ms / 1e9
    a = torch.randn(8192, 8192, device=DEV, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=DEV, dtype=torch.bfloat16)
    ms = bench(lambda: a @ b)
    mm = 2 * 8192**3 / ms / 1e9
    record("ceiling", copy_tbps=copy, matmul_tflops=mm)
    return copy, mm


def flex_fns():
    """Compiled FlexAttention and its block-mask builder, or None where unavailable."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        return torch.compile(flex_attention, dynamic=False), create_block_mask
    except Exception as e:
        print(f"FlexAttention unavailable: {e}", flush=True)
        return None


def sdpa_flash(q, k, v, scale):
    """torch SDPA restricted to the flash backend; q [B,H,M,D], k/v [B,Hkv,N,D]."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
        )


def make_reuse(h, hkv, d, batch, block, kept, page_size=16):
    pages_per = -(-kept // page_size)
    n_pages = max(1, batch * pages_per)
    kp = torch.randn(n_pages, page_size, hkv, d, device=DEV, dtype=DT)
    vp = torch.randn_like(kp)
    table = torch.randperm(n_pages, device=DEV).to(torch.int32)[: batch * pages_per]
    table = table.view(batch, pages_per) if pages_per else torch.zeros(batch, 1, dtype=torch.int32)
    t = batch * block
    q = torch.randn(t, h, d, device=DEV, dtype=DT)
    kn = torch.randn(t, hkv, d, device=DEV, dtype=DT)
    vn = torch.randn_like(kn)
    cu_q = torch.arange(0, t + 1, block, device=DEV, dtype=torch.int32)
    kept_len = torch.full((batch,), kept, device=DEV, dtype=torch.int32)
    return q, kn, vn, cu_q, block, kp, vp, table.to(DEV), kept_len, d**-0.5


def run_reuse(copy_bw, flex, shapes):
    print("== REUSE attention", flush=True)
    for shape in shapes:
        reuse_case(copy_bw, flex, *shape)


def reuse_case(copy_bw, flex, model, batch, ctx, ret):
    h, hkv, d = MODELS[model]
    block = 32
    kept = int((ctx - block) * ret)
    el = 2  # bytes per bf16 element
    nbytes = el * d * (2 * batch * hkv * (kept + block) + 2 * batch * block * h)
    flops = 4 * batch * h * block * (kept + block) * d
    sets = [make_reuse(h, hkv, d, batch, block, kept) for _ in range(copies_for(nbytes))]
    ms = graph_bench([lambda a=a: reuse_attention(*a) for a in sets])
    row = dict(model=model, batch=batch, ctx=ctx, retention=ret, kept=kept, triton_ms=ms)
    row["triton_eager_ms"] = bench(lambda: reuse_attention(*sets[0]))
    row["tbps"] = nbytes / ms / 1e9
    row["pct_copy"] = 100 * row["tbps"] / copy_bw
    row["tflops"] = flops / ms / 1e9
    # Library baselines get the kept K/V already gathered and padded: a lower bound on them.
    if DEV.type == "cuda":
        base = []
        for a in sets:
            q = a[0].view(batch, block, h, d).transpose(1, 2)
            kk = torch.randn(batch, hkv, kept + block, d, device=DEV, dtype=DT)
            base.append((q, kk, torch.randn_like(kk)))
        row["sdpa_flash_ms"] = try_bench(None, [lambda b=b: sdpa_flash(*b, d**-0.5) for b in base])
        if flex is not None and batch == 8 and ret == 0.5 and ctx >= 2048:
            fa, _ = flex
            row["flex_ms"] = try_bench(
                None,
                [lambda b=b: fa(*b, scale=d**-0.5, enable_gqa=h != hkv) for b in base],
            )
        if row["sdpa_flash_ms"]:
            row["speedup_vs_sdpa"] = row["sdpa_flash_ms"] / ms
    record("reuse", **row)


def run_reuse_sweep(shapes):
    print("== REUSE tile/split sweep", flush=True)
    for model, batch, ctx, ret in shapes:
        h, hkv, d = MODELS[model]
        args = make_reuse(h, hkv, d, batch, 32, int((ctx - 32) * ret))
        tiles = [(None, None)] + ([(64, 4), (128, 8), (128, 4)] if model == "dream" else [])
        for block_m, warps in tiles:
            for block_n in (32, 64, 128):
                for splits in (None, 1, 2, 4, 8):
                    ms = graph_bench(
                        [
                            lambda a=args, c=(splits, block_n, block_m, warps): reuse_attention(
                                *a, *c
                            )
                        ]
                    )
                    record(
                        "reuse_sweep",
                        model=model,
                        batch=batch,
                        ctx=ctx,
                        retention=ret,
                        block_m=block_m or "auto",
                        warps=warps or "auto",
                        block_n=block_n,
                        splits=splits or "auto",
                        ms=ms,
                    )


def varlen_lib():
    try:
        from torch.nn.attention.varlen import varlen_attn

        return varlen_attn
    except Exception as e:
        print(f"varlen_attn unavailable: {e}", flush=True)
        return None


def run_full(mm_peak, flex, cases):
    print("== FULL attention", flush=True)
    lib = varlen_lib() if DEV.type == "cuda" else None
    for model, lens in cases:
        full_case(mm_peak, flex, lib, model, lens)


def full_case(mm_peak, flex, lib, model, lens):
    h, hkv, d = MODELS[model]
    t = sum(lens)
    q = torch.randn(t, h, d, device=DEV, dtype=DT)
    k = torch.randn(t, hkv, d, device=DEV, dtype=DT)
    v = torch.randn_like(k)
    cu = torch.tensor([0, *itertools_acc(lens)], device=DEV, dtype=torch.int32)
    mx = max(lens)
    scale = d**-0.5
    ms = bench(lambda: varlen_attention(q, k, v, cu, mx, scale))
    flops = sum(4 * n * n * h * d for n in lens)
    row = dict(model=model, lens=lens, triton_ms=ms, tflops=flops / ms / 1e9)
    row["pct_matmul"] = 100 * row["tflops"] / mm_peak
    if DEV.type == "cuda":
        # SDPA flash over a zero-padded batch (padding keys would change the softmax, so
        # this is the speed of the padded shape, a lower bound on a correct padded use).
        qp = torch.randn(len(lens), h, mx, d, device=DEV, dtype=DT)
        kp = torch.randn(len(lens), hkv, mx, d, device=DEV, dtype=DT)
        vp = torch.randn_like(kp)
        row["sdpa_flash_padded_ms"] = try_bench(lambda: sdpa_flash(qp, kp, vp, scale))
        segs = [(a, b) for a, b in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True)]

        def per_seg():
            for a, b in segs:
                sdpa_flash(
                    q[a:b].transpose(0, 1)[None],
                    k[a:b].transpose(0, 1)[None],
                    v[a:b].transpose(0, 1)[None],
                    scale,
                )

        row["sdpa_flash_per_seq_ms"] = try_bench(per_seg)
        if lib is not None:
            row["torch_varlen_ms"] = try_bench(
                lambda: lib(q, k, v, cu, cu, mx, mx, scale=scale, enable_gqa=h != hkv)
            )
        if flex is not None and max(lens) >= 2048 and len(lens) in (1, 8):
            fa, cbm = flex
            seg_id = torch.repeat_interleave(
                torch.arange(len(lens), device=DEV), torch.tensor(lens, device=DEV)
            )

            def doc(b, hh, qi, ki):
                return seg_id[qi] == seg_id[ki]

            try:
                bm = cbm(doc, None, None, t, t, device=DEV)
                qf, kf, vf = (x.transpose(0, 1)[None] for x in (q, k, v))
                row["flex_ms"] = try_bench(
                    lambda: fa(qf, kf, vf, block_mask=bm, scale=scale, enable_gqa=h != hkv)
                )
            except Exception as e:
                print(f"    flex failed: {e}", flush=True)
        base = row.get("sdpa_flash_per_seq_ms")
        if base:
            row["pct_of_sdpa_flash"] = 100 * base / ms
    record("full", **row)


def run_full_sweep(model, lens):
    print("== FULL tile sweep", flush=True)
    h, hkv, d = MODELS[model]
    t = sum(lens)
    q = torch.randn(t, h, d, device=DEV, dtype=DT)
    k = torch.randn(t, hkv, d, device=DEV, dtype=DT)
    v = torch.randn_like(k)
    cu = torch.tensor([0, *itertools_acc(lens)], device=DEV, dtype=torch.int32)
    for bm, bn, w, s in [
        (128, 64, 8, 3),
        (128, 128, 8, 3),
        (128, 64, 4, 3),
        (128, 32, 4, 4),
        (64, 64, 4, 3),
        (128, 64, 8, 2),
        (128, 128, 8, 2),
        (64, 128, 4, 3),
    ]:
        try:
            ms = bench(
                lambda t=(bm, bn, w, s): varlen_attention(q, k, v, cu, max(lens), d**-0.5, t)
            )
        except Exception as e:  # a config can run out of shared memory
            print(f"    config {(bm, bn, w, s)} failed: {type(e).__name__}", flush=True)
            continue
        flops = sum(4 * n * n * h * d for n in lens)
        record(
            "full_sweep",
            model=model,
            lens=lens,
            block_m=bm,
            block_n=bn,
            warps=w,
            stages=s,
            ms=ms,
            tflops=flops / ms / 1e9,
        )


def itertools_acc(xs: list[int]) -> list[int]:
    out, s = [], 0
    for x in xs:
        s += x
        out.append(s)
    return out


def run_selection(full_rows, mm_peak, copy_bw, cases):
    print("== selection", flush=True)
    for case in cases:
        selection_case(full_rows, mm_peak, copy_bw, *case)


def selection_case(full_rows, mm_peak, copy_bw, model, batch, length, ret):
    h, hkv, d = MODELS[model]
    block = 32
    lens = [length] * batch
    tk = batch * length
    k = torch.randn(tk, hkv, d, device=DEV, dtype=DT)
    v = torch.randn_like(k)
    qw = torch.randn(batch * block, h, d, device=DEV, dtype=DT)
    i32 = dict(device=DEV, dtype=torch.int32)
    cu_seq = torch.tensor([0, *itertools_acc(lens)], **i32)
    cu_win = torch.arange(0, batch * block + 1, block, **i32)
    ws = torch.full((batch,), length - 2 * block, **i32)
    wl = torch.full((batch,), block, **i32)
    nk = min(max(1, int((length - block) * ret)), length - block)
    n_keep = torch.full((batch,), nk, **i32)
    hs = torch.ones(batch, dtype=torch.bool, device=DEV)
    pk = torch.full((batch,), 3, **i32)
    pages = -(-nk // 16)
    kp = torch.empty(batch * pages, 16, hkv, d, device=DEV, dtype=DT)
    vp = torch.empty_like(kp)
    table = torch.arange(batch * pages, **i32).view(batch, pages)
    args = SelectionArgs(
        q_win=qw, cu_win=cu_win, k_seq=k, v_seq=v, cu_seq=cu_seq, win_start=ws, win_len=wl,
        n_keep=n_keep, head_select=hs, pool_kernel=pk, k_pool=kp, v_pool=vp, page_table=table,
        scale=d**-0.5, max_keep=nk,
    )  # fmt: skip
    eager = bench(lambda: select_and_store(args))
    ms = graph_bench([lambda: select_and_store(args)])
    # One layer of a SELECT step: its matmuls (16 GFLOP per token / 32 layers at the measured
    # matmul rate, or the layer's 0.5 GB of weights at copy speed) plus its FULL attention.
    layer_mm_ms = max(0.5e9 * tk / (mm_peak * 1e9), 0.5e9 / (copy_bw * 1e9))
    attn = [r["triton_ms"] for r in full_rows if r["model"] == model and r["lens"] == lens]
    row = dict(model=model, batch=batch, length=length, retention=ret, ms=ms, eager_ms=eager)
    row["kv_read_tbps"] = 2 * k.numel() * 2 / ms / 1e9
    if attn:
        row["select_layer_ms"] = layer_mm_ms + attn[0]
        row["pct_of_select_step"] = 100 * ms / row["select_layer_ms"]
        row["pct_eager"] = 100 * eager / row["select_layer_ms"]
    record("selection", **row)


def run_sampling(mm_peak, copy_bw, cases):
    print("== sampling", flush=True)
    for batch, block, vocab, temp in cases:
        gen = torch.Generator().manual_seed(0)
        x = dict(
            logits=(torch.randn(batch, block, vocab, generator=gen) * 3).to(DEV, DT),
            temperature=torch.full((batch,), temp, dtype=torch.float64, device=DEV),
            seed=torch.arange(batch, device=DEV),
            step=torch.full((batch,), 7, device=DEV),
            positions=torch.arange(block, device=DEV).expand(batch, block).contiguous(),
            logits_eos_inf=torch.zeros(batch, dtype=torch.bool, device=DEV),
            conf_eos_eot_inf=torch.ones(batch, dtype=torch.bool, device=DEV),
            mask_id=vocab - 1,
            eos_id=1,
            eot_id=2,
        )
        ms = bench(lambda x=x: sample_tokens(**x))
        ref = bench(lambda x=x: reference.sample_tokens(**x))
        got, want = sample_tokens(**x), reference.sample_tokens(**x)
        # A REUSE step at this batch: every block token through the model (16 GFLOP each) at
        # the matmul rate, or the 16 GB of weights at copy speed, whichever is longer.
        step_ms = max(batch * block * 16e9 / (mm_peak * 1e9), 16e9 / (copy_bw * 1e9))
        record(
            "sampling",
            batch=batch,
            block=block,
            vocab=vocab,
            temperature=temp,
            triton_ms=ms,
            torch_reference_ms=ref,
            logits_tbps=x["logits"].numel() * 2 / ms / 1e9,
            reuse_step_ms=step_ms,
            pct_of_reuse_step=100 * ms / step_ms,
            same_tokens=bool(torch.equal(got[0], want[0])),
            max_conf_diff=float((got[1] - want[1]).abs().max()),
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU")
    ap.add_argument("--json", help="write all rows here")
    ap.add_argument("--sweep", action="store_true", help="also sweep tiles and splits")
    args = ap.parse_args()
    if args.json:
        JSON_PATH.append(args.json)
    card = torch.cuda.get_device_name() if DEV.type == "cuda" else "cpu (interpreter)"
    print(f"card={card} torch={torch.__version__} triton={triton.__version__}", flush=True)
    copy_bw, mm_peak = ceilings()
    flex = flex_fns() if DEV.type == "cuda" else None
    if SMOKE:
        global MODELS
        MODELS = {"llada": (2, 2, 16), "dream": (7, 1, 16)}
        reuse = [("llada", 2, 96, 0.5), ("dream", 1, 64, 1.0)]
        full = [("llada", [40, 9]), ("dream", [33])]
        sel = [("llada", 2, 96, 0.5), ("dream", 1, 64, 0.3)]
        samp = [(2, 4, 3000, 1.0)]
    else:
        reuse = [
            (m, b, c, r)
            for m in MODELS
            for b in (1, 8, 64)
            for c in (512, 2048, 8192)
            for r in (0.3, 0.5, 1.0)
        ]
        full = [(m, [n]) for m in MODELS for n in (512, 1024, 2048, 4096, 8192)]
        full += [(m, [n] * b) for m in MODELS for n, b in ((512, 8), (2048, 8))]
        sel = [
            (m, b, n, 0.5)
            for m in MODELS
            for b, n in ((1, 512), (1, 2048), (1, 8192), (8, 512), (8, 2048))
        ]
        samp = [(32, 32, 126464, 1.0), (32, 32, 126464, 0.0), (8, 32, 126464, 1.0)]
    if args.sweep and not SMOKE:
        for lens in ([4096], [1024], [512] * 8):
            run_full_sweep("llada", lens)
        run_full_sweep("dream", [4096])
        run_reuse_sweep(
            [
                ("llada", 1, 8192, 0.5),
                ("llada", 8, 2048, 0.5),
                ("llada", 64, 2048, 0.5),
                ("dream", 8, 2048, 0.5),
                ("dream", 1, 8192, 0.5),
                ("dream", 64, 8192, 0.5),
            ]
        )
    run_reuse(copy_bw, flex, reuse)
    if DEV.type == "cuda":
        torch.cuda.empty_cache()
    run_full(mm_peak, flex, full)
    run_selection([r for r in RESULTS if r["kind"] == "full"], mm_peak, copy_bw, sel)
    run_sampling(mm_peak, copy_bw, samp)
    meta = dict(
        card=card,
        torch=torch.__version__,
        triton=triton.__version__,
        commit=provenance.commit(),
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        command=" ".join(sys.argv),
    )
    record("meta", **meta)
    print("done", json.dumps(meta), flush=True)
    assert all(math.isfinite(r.get("triton_ms", r.get("ms", 0.0)) or 0.0) for r in RESULTS)


if __name__ == "__main__":
    main()
