"""Offline engine benchmark: tokens/s, step time by phase, memory, against the roofline of the
algorithm on this card (docs/design.md §13), its ceilings measured in the same run.

Runs the engine on random weights of named shapes (speed depends only on shapes):

    python benchmarks/offline.py --json results.json            # LLaDA-8B and Dream-7B shapes
    python benchmarks/offline.py --quantization fp8 --shapes llada-8b --batches 1 32
    python benchmarks/offline.py --shapes llada-8b --batches 1 4 --skinny-gemm both
    python benchmarks/offline.py --shapes tiny --device cpu --smoke     # CI smoke run

For every (shape, prompt length, batch, mode) it reports tokens/s, mean step time per phase
(FULL / SELECT / REUSE), peak GPU memory, cache pages in use, the roofline's tokens/s and the
share of it reached, and, for the naive baseline (a full forward every step: the official
sampler, batched), tokens/s over its first `--baseline-iters` steps (its cost per step is
constant). An MoE shape also runs "official": that baseline with the official per-expert loop
in its MoE layers (`official_moe.py`) instead of the fused kernel, the cost of the official
model and `generate`. `--steps` below `--gen` commits several tokens per step. At prompts of
2048 it also counts how many requests a fixed pool runs at once per retention ratio.
`--skinny-gemm both` runs every configuration with the library's GEMMs, then with the skinny
Triton GEMM (EngineConfig.skinny_gemm), each row naming its setting and the table the ratio.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import provenance
import torch
from official_moe import official_experts
from roofline import (
    Ceilings,
    block_ceiling_tokens_per_s,
    ceiling_tokens_per_s,
    measure_ceilings,
)

from dllmserve import SamplingParams, SparseConfig
from dllmserve.engine.config import EngineConfig
from dllmserve.engine.engine import Engine
from dllmserve.models.config import QUANTIZATION_HELP, QUANTIZATIONS
from dllmserve.models.shapes import SHAPES, random_model
from dllmserve.sparse.state import Phase

# --skinny-gemm: the engine settings run, in order ("both": the library's GEMMs, then the kernel,
# each over every configuration, so one run compares them)
SKINNY_GEMM = {"off": (False,), "on": (True,), "both": (False, True)}


@dataclass
class Result:
    shape: str
    prompt: int
    batch: int
    mode: str  # "dense" or "r=<ratio>"
    tokens_per_s: float
    elapsed_s: float
    iterations: int
    committed_tokens: int
    step_ms: dict[str, float] = field(default_factory=dict)
    peak_gpu_gib: float = 0.0
    max_pages_used: int = 0
    ceiling_tokens_per_s: float | None = None
    pct_of_ceiling: float | None = None
    graph_captures: int = 0  # CUDA graphs captured during the run: 0 after a warm-up
    skinny_gemm: bool = False  # the engine's setting (the GPU's few-row GEMMs; off the GPU a no-op)


def run_one(
    engine: Engine,
    shape: str,
    prompt_len: int,
    batch: int,
    sparse: SparseConfig | None,
    gen: int,
    steps: int,
    block: int,
    max_iters: int | None,
    seed: int,
    ceilings: Ceilings | None = None,
    recompute: bool = False,
) -> Result:
    rng = random.Random(seed)
    vocab = engine.model.cfg.vocab_size
    mask = engine.tokens.mask
    params = SamplingParams(gen_length=gen, steps=steps, block_length=block, stop_at_eos=False)
    for i in range(batch):
        ids = [rng.randrange(vocab) for _ in range(prompt_len)]
        ids = [t if t != mask else t - 1 for t in ids]
        engine.add_request(f"b{i}", ids, params, sparse)
        if recompute:  # a block-diffusion request forwarding its canvas from 0 every step
            engine.batcher.waiting[-1].recompute_prefix = True
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    phase_time: dict[str, list[float]] = {p.name: [] for p in Phase}
    iters = committed = max_pages = 0
    captured = engine.runner.graph_captures()
    start = time.perf_counter()
    while engine.has_unfinished() and (max_iters is None or iters < max_iters):
        engine.batcher.admit()
        phases = {r.phase for r in engine.batcher.running.values()}
        t0 = time.perf_counter()
        updates = engine.step()  # ends with the one device-to-host copy: a sync point
        dt = time.perf_counter() - t0
        if len(phases) == 1:
            phase_time[phases.pop().name].append(dt)
        committed += sum(len(u.positions) for u in updates)
        st = engine.stats()
        max_pages = max(max_pages, st["total_pages"] - st["free_pages"])
        iters += 1
    elapsed = time.perf_counter() - start
    captured = engine.runner.graph_captures() - captured
    abort_all(engine)
    mode = "dense" if sparse is None else f"r={sparse.retention_ratio}"
    ceil = None
    if sparse is None and ceilings is not None and engine.model.cfg.block_diffusion:
        ceil = block_ceiling_tokens_per_s(
            engine.model.cfg, ceilings, batch=batch, prompt=prompt_len, gen=gen, steps=steps,
            block=block, quantization=engine.config.quantization,
        )  # fmt: skip
    if sparse is not None and ceilings is not None:
        ceil = ceiling_tokens_per_s(
            engine.model.cfg, ceilings, batch=batch, prompt=prompt_len, gen=gen, steps=steps,
            block=block, delay=sparse.delay_step, retention=sparse.retention_ratio,
            quantization=engine.config.quantization,
        )  # fmt: skip
    tokens_per_s = committed / elapsed
    return Result(
        shape=shape,
        prompt=prompt_len,
        batch=batch,
        mode=mode,
        tokens_per_s=tokens_per_s,
        elapsed_s=elapsed,
        iterations=iters,
        committed_tokens=committed,
        step_ms={k: 1000 * sum(v) / len(v) for k, v in phase_time.items() if v},
        peak_gpu_gib=torch.cuda.max_memory_allocated() / 2**30
        if engine.device.type == "cuda"
        else 0,
        max_pages_used=max_pages,
        ceiling_tokens_per_s=ceil,
        pct_of_ceiling=100 * tokens_per_s / ceil if ceil else None,
        graph_captures=captured,
        skinny_gemm=engine.config.skinny_gemm,
    )


def capacity(engine: Engine, prompt_len: int, gen: int, block: int, ratio: float, n: int) -> int:
    """How many prompt-`prompt_len` requests the pool actually runs at once at this ratio."""
    sparse = SparseConfig(retention_ratio=ratio, delay_step=1, default_block_len=block)
    params = SamplingParams(gen_length=gen, steps=gen, stop_at_eos=False)
    for i in range(n):
        engine.add_request(f"c{i}", [1 + (i + j) % 1000 for j in range(prompt_len)], params, sparse)
    engine.step()
    running = engine.stats()["running"]
    abort_all(engine)
    return running


def abort_all(engine: Engine) -> None:
    b = engine.batcher
    for rid in list(b.running) + [r.request_id for r in b.waiting]:
        engine.abort(rid)


def profile(
    engine: Engine, shape: str, prompt_len: int, batch: int, sparse: SparseConfig | None, a
) -> None:
    """The top kernels and host ops of one block (FULL, SELECT and REUSE steps; a
    block-diffusion model's block steps)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run_one(engine, shape, prompt_len, batch, sparse, a.block, a.block, a.block, None, 1)
    mode = f"r={sparse.retention_ratio}" if sparse is not None else "dense"
    print(f"--- profile: prompt {prompt_len}, batch {batch}, {mode}")
    print(
        prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60)
    )
    print(
        prof.key_averages().table(sort_by="cpu_time_total", row_limit=8, max_name_column_width=60)
    )


def bench_shape(shape: str, a, dev: torch.device, ceilings: Ceilings | None):
    """Every (prompt, batch, mode) of one shape per GEMM setting, then the pool-capacity probe
    at prompt 2048."""
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    print(f"building random {shape} on {dev} ...", flush=True)
    model = random_model(SHAPES[shape], dtype, dev, quantization=a.quantization)
    max_batch = max(a.batches + a.long_prompt_batches)
    config = EngineConfig(
        max_num_seqs=max_batch,
        max_num_batched_tokens=max_batch * (max(a.prompts) + a.gen),
        enforce_eager=a.eager,
        num_cache_pages=None if dev.type == "cuda" else 4096,
        quantization=a.quantization,
    )
    results: list[Result] = []
    if model.cfg.moe is not None and a.quantization is None:
        results += official_baseline(model, shape, config, a)
    probe = dev.type == "cuda" and 2048 in a.prompts and not model.cfg.block_diffusion
    pool_pages = 0
    for skinny_gemm in SKINNY_GEMM[a.skinny_gemm]:
        engine = Engine(model, None, replace(config, skinny_gemm=skinny_gemm), model_name=shape)
        results += sweep(engine, shape, a, ceilings)
        if probe:  # a pool that holds 8 dual-cache prompt-2048 requests
            pool_pages = 8 * dual_cache_pages(engine, 2048, a)
        # one engine at a time: each one's page pool takes most of the free memory
        del engine
        release_memory()
    cap = pool_capacity(model, shape, config, pool_pages, a) if probe else {}
    return results, cap


def sweep(engine: Engine, shape: str, a, ceilings: Ceilings | None) -> list[Result]:
    """Every (prompt, batch, mode) on one engine, each after a warm-up on its shapes."""
    block_diffusion = engine.model.cfg.block_diffusion
    results = []
    for prompt in a.prompts:
        batches = a.batches if prompt < 1024 else a.long_prompt_batches
        for b in batches:
            modes = [None] + [
                SparseConfig(retention_ratio=r, delay_step=a.delay, default_block_len=a.block)
                for r in a.ratios
                if not block_diffusion  # sparse attention is refused there (design.md §15)
            ]
            for sp in modes:
                # a block-diffusion run is whole generations, as its roofline is: over the
                # first --baseline-iters steps its prompt's prefill weighed 16x too much
                whole = sp is not None or block_diffusion
                iters = None if whole else a.baseline_iters
                # warm-up on the same shapes (so the same page-table width and graph keys):
                # two blocks compile the Triton kernels, tune the skinny GEMM's shapes (when
                # on) and capture this batch's CUDA graphs (REUSE, and at batch 1 also FULL
                # and SELECT, whose keys hold the prompt length and repeat in every block; a
                # block-diffusion model's block steps and the next block's first), so no
                # capture falls in the timed run; the dense baseline repeats one shape, which
                # a few iterations cover
                warm = 2 * a.block if whole else 4
                run_one(engine, shape, prompt, b, sp, a.gen, a.steps, a.block, warm, 0)
                if a.profile and (sp is not None or block_diffusion):
                    profile(engine, shape, prompt, b, sp, a)
                res = run_one(engine, shape, prompt, b, sp, a.gen, a.steps, a.block, iters,
                              seed=b, ceilings=ceilings)  # fmt: skip
                results.append(res)
                print(json.dumps(asdict(res)), flush=True)
    return results


def dual_cache_pages(engine: Engine, prompt_len: int, a) -> int:
    """The cache pages of one dual-cache (sparse) request of `prompt_len` tokens."""
    probe = engine.make_request(
        "probe",
        [1] * prompt_len,
        SamplingParams(gen_length=a.gen, steps=a.gen),
        SparseConfig(retention_ratio=1.0, default_block_len=a.block),
    )
    return probe.spec.cache_pages


def pool_capacity(model, shape: str, config: EngineConfig, pool_pages: int, a) -> dict[str, int]:
    """How many prompt-2048 requests a pool of `pool_pages` runs at once, per retention ratio."""
    small = Engine(
        model,
        None,
        replace(config, max_num_seqs=64, max_num_batched_tokens=64 * (2048 + a.gen),
                num_cache_pages=pool_pages, enforce_eager=True),
    )  # fmt: skip
    cap = {str(r): capacity(small, 2048, a.gen, a.block, r, 40) for r in (1.0, 0.5, 0.3)}
    print(f"{shape}: concurrent prompt-2048 requests in a pool of {pool_pages} pages: {cap}")
    return cap


def release_memory() -> None:
    """Give a dropped engine's memory back before the next one sizes its page pool."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def official_baseline(model, shape: str, config: EngineConfig, a) -> list[Result]:
    """The official algorithm at the official MoE layer's cost: a full forward every step with
    the per-expert loop (`official_moe`), eager (the loop syncs with the host), over the first
    `--baseline-iters` steps of each (prompt, batch). A block-diffusion model's official
    `generate` forwards the canvas from position 0 up to the current block at every step: its
    requests recompute their prefix (no block K/V cache, no prefix caching)."""
    recompute = model.cfg.block_diffusion
    pages = 64 if not recompute else None  # the block cache's pages hold the whole canvas
    engine = Engine(model, None, replace(config, enforce_eager=True, num_cache_pages=pages,
                                         enable_prefix_caching=False))  # fmt: skip
    results = []
    with official_experts():
        for prompt in a.prompts:
            for b in a.batches if prompt < 1024 else a.long_prompt_batches:
                run_one(engine, shape, prompt, b, None, a.gen, a.steps, a.block, 2, 0,
                        recompute=recompute)  # fmt: skip
                res = run_one(engine, shape, prompt, b, None, a.gen, a.steps, a.block,
                              a.baseline_iters, seed=b, recompute=recompute)  # fmt: skip
                res.mode = "official"
                results.append(res)
                print(json.dumps(asdict(res)), flush=True)
    del engine
    release_memory()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=["llada-8b", "dream-7b"], choices=sorted(SHAPES))
    ap.add_argument("--shape", dest="shapes", type=lambda s: [s], help="one shape (--shapes X)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--prompts", type=int, nargs="+", default=[128, 2048])
    ap.add_argument(
        "--long-prompt-batches",
        type=int,
        nargs="+",
        default=[1, 8],
        help="the batches run at prompts >= 1024, instead of --batches (their FULL steps are long)",
    )
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.5])
    ap.add_argument("--gen", type=int, default=256)
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: --gen)")
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--delay", type=int, default=1)
    ap.add_argument("--baseline-iters", type=int, default=16)
    ap.add_argument("--quantization", choices=QUANTIZATIONS, default=None, help=QUANTIZATION_HELP)
    ap.add_argument("--eager", action="store_true", help="no CUDA graphs")
    ap.add_argument(
        "--skinny-gemm",
        choices=sorted(SKINNY_GEMM),
        default="off",
        help="EngineConfig.skinny_gemm: the skinny Triton GEMM for few-row linear layers where "
        "faster; both: every configuration with the library's GEMMs, then with it",
    )
    ap.add_argument("--profile", action="store_true", help="print a kernel profile per config")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes for a quick CPU check")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if a.smoke:
        a.batches, a.prompts, a.gen, a.block, a.long_prompt_batches = [1, 2], [8], 16, 8, [1]
        a.baseline_iters, a.ratios = 4, [0.5, 0.3]
    a.steps = a.steps or a.gen
    dev = torch.device(a.device)
    ceilings = measure_ceilings(dev) if dev.type == "cuda" else None
    if ceilings is not None:
        print(f"ceilings measured now: {ceilings}", flush=True)
    results: list[Result] = []
    capacity_by_shape = {}
    for shape in a.shapes:
        res, cap = bench_shape(shape, a, dev, ceilings)
        results += res
        capacity_by_shape[shape] = cap
        release_memory()  # the shape's model and engine go before the next shape's
    print_table(results)
    if a.json:
        card = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
        a.json.write_text(
            json.dumps(
                {
                    "card": card,
                    "commit": provenance.commit(),
                    "args": vars(a) | {"json": str(a.json)},
                    "ceilings": asdict(ceilings) if ceilings else None,
                    "results": [asdict(r) for r in results],
                    "capacity": capacity_by_shape,
                },
                indent=1,
            )
        )


def print_table(results: list[Result]) -> None:
    """One row per result; "x naive" is over the dense row of the same GEMM setting, "x lib" (a
    skinny-GEMM row) over the same configuration with the library's GEMMs."""
    tps = {(r.shape, r.prompt, r.batch, r.mode, r.skinny_gemm): r.tokens_per_s for r in results}
    print(
        f"\n{'shape':>12} {'prompt':>6} {'batch':>5} {'mode':>8} {'gemm':>6} {'tok/s':>9} "
        f"{'x naive':>7} {'x offic':>7} {'x lib':>6} {'ceiling':>8} {'%ceil':>6} {'FULL ms':>8} "
        f"{'SELECT ms':>9} {'REUSE ms':>8} {'peak GiB':>8} {'pages':>7}"
    )
    for r in results:
        config = (r.shape, r.prompt, r.batch)
        naive = tps.get((*config, "dense", r.skinny_gemm))
        off = tps.get((*config, "official", False))
        lib = tps.get((*config, r.mode, False)) if r.skinny_gemm else None
        x_off = f"{r.tokens_per_s / off:.2f}" if off else "-"
        x_lib = f"{r.tokens_per_s / lib:.2f}" if lib else "-"
        ceil = f"{r.ceiling_tokens_per_s:.0f}" if r.ceiling_tokens_per_s else "-"
        pct = f"{r.pct_of_ceiling:.0f}%" if r.pct_of_ceiling else "-"
        ms = [f"{r.step_ms.get(p, 0):.2f}" for p in ("FULL", "SELECT", "REUSE")]
        gemm = "skinny" if r.skinny_gemm else "lib"
        print(
            f"{r.shape:>12} {r.prompt:>6} {r.batch:>5} {r.mode:>8} {gemm:>6} "
            f"{r.tokens_per_s:>9.1f} {r.tokens_per_s / naive if naive else 0:>7.2f} {x_off:>7} "
            f"{x_lib:>6} {ceil:>8} {pct:>6} {ms[0]:>8} {ms[1]:>9} {ms[2]:>8} "
            f"{r.peak_gpu_gib:>8.1f} {r.max_pages_used:>7}"
        )


if __name__ == "__main__":
    main()
