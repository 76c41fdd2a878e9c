"""Time to first update of a block-diffusion request whose prompt shares a long system prompt
with an earlier one: with prefix caching (its full prompt blocks' K/V adopted from the cache)
against without (prefilled again), on the same random-weights engine (LLaDA2.0-mini's shape by
default). Each timed request runs alone, after an untimed request that fills the cache.

    python benchmarks/prefix_cache.py --json out.json                      # GPU, llada2-mini
    python benchmarks/prefix_cache.py --shape tiny-llada2 --device cpu --smoke   # CPU check

--profile adds, under "profile", one more hit's first update under torch.profiler: its wall
time, the GPU's busy and idle time inside it, the top device kernels and host ops, and the
graph replays and kernel launches from the host. --compare-eager-store-steps then measures the
same again (other prompts) with the steps that store a finished block's K/V run eagerly, as the
engine did before it graphed them (the hit's first step is one), under "eager_store_steps".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import time
from pathlib import Path

import provenance
import torch
from torch.profiler import ProfilerActivity, profile, record_function

from dllmserve import SamplingParams
from dllmserve.engine.engine import Engine
from dllmserve.models.config import QUANTIZATION_HELP, QUANTIZATIONS

TOP = 15


def first_update_s(
    engine: Engine,
    rid: str,
    prompt: list[int],
    params: SamplingParams,
    around: contextlib.AbstractContextManager | None = None,
) -> float:
    """Seconds from add_request to the request's first step update (inside `around`, a
    profiler); the request then runs on to its end (untimed) so the next one starts alone."""
    first = None
    with around or contextlib.nullcontext():
        start = time.perf_counter()
        with record_function("bench.add_request"):
            engine.add_request(rid, prompt, params)
        while first is None and engine.has_unfinished():
            with record_function("bench.step"):
                updates = engine.step()
            if any(u.request_id == rid for u in updates):
                first = time.perf_counter() - start
    while engine.has_unfinished():
        engine.step()
    assert first is not None
    return first


def _union_us(spans: list[tuple[float, float]]) -> float:
    """The length of the union of [start, end) spans."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(spans):
        if e > end:
            total += e - max(s, end)
            end = e
    return total


def profile_summary(prof: profile, wall_s: float) -> dict:
    """Where the profiled first update's time went: device busy / idle inside the window of
    the benchmark's own ranges, the top kernels and host ops, launches and graph replays."""
    events = prof.events()
    marks = [e.time_range for e in events if e.name.startswith("bench.")]
    lo, hi = min(r.start for r in marks), max(r.end for r in marks)
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = _union_us(
        [(max(e.time_range.start, lo), min(e.time_range.end, hi)) for e in kernels
         if e.time_range.end > lo and e.time_range.start < hi]
    )  # fmt: skip
    per_kernel: dict[str, list[float]] = {}
    for e in kernels:
        per_kernel.setdefault(e.name, []).append(e.time_range.elapsed_us())
    top_kernels = sorted(per_kernel.items(), key=lambda kv: -sum(kv[1]))[:TOP]
    host = [a for a in prof.key_averages() if a.device_type == torch.autograd.DeviceType.CPU]
    top_host = sorted(host, key=lambda a: -a.self_cpu_time_total)[:TOP]
    ranges = {a.key: a.cpu_time_total / 1000 for a in host if a.key.startswith(("bench.", "dllm."))}
    counts = {a.key: a.count for a in host}
    return {
        "wall_ms": 1000 * wall_s,
        "window_ms": (hi - lo) / 1000,
        "gpu_busy_ms": busy / 1000,
        "gpu_idle_ms": (hi - lo - busy) / 1000,
        "kernels": len(kernels),
        "graph_launches": sum(n for k, n in counts.items() if "GraphLaunch" in k),
        "kernel_launches": sum(n for k, n in counts.items() if "LaunchKernel" in k),
        "host_syncs": sum(n for k, n in counts.items() if "Synchronize" in k),
        "ranges_ms": ranges,
        "top_kernels_ms": [
            {"name": k[:120], "calls": len(v), "total_ms": sum(v) / 1000} for k, v in top_kernels
        ],
        "top_host_self_ms": [
            {"name": a.key[:120], "calls": a.count, "self_ms": a.self_cpu_time_total / 1000}
            for a in top_host
        ],
    }


def run(engine: Engine, a, seed: int) -> dict:
    rng = random.Random(seed)
    vocab = engine.limits.vocab_size  # ids the tokenizer knows
    avoid = {engine.tokens.mask, *engine.tokens.stop}

    def tokens(n: int) -> list[int]:
        return [t for t in (rng.randrange(vocab) for _ in range(4 * n)) if t not in avoid][:n]

    system = tokens(a.system)
    params = SamplingParams(gen_length=a.gen, steps=a.gen, stop_at_eos=False)
    timings: dict[str, list[float]] = {"hit": [], "miss": []}
    warm_captures = 0
    for i in range(a.reps + 1):  # the first pair warms up (compiles, captures), untimed
        if i == 1:
            warm_captures = engine.runner.graph_captures()
        first_update_s(engine, f"fill{i}", system + tokens(a.question), params)
        hit = first_update_s(engine, f"hit{i}", system + tokens(a.question), params)
        miss = first_update_s(engine, f"miss{i}", tokens(a.system) + tokens(a.question), params)
        if i:
            timings["hit"].append(hit)
            timings["miss"].append(miss)
    med = {k: statistics.median(v) for k, v in timings.items()}
    stats = engine.stats()
    captures = engine.runner.graph_captures() - warm_captures  # 0: none in the timed runs
    extra = {}
    if a.profile:
        first_update_s(engine, "fill-profiled", system + tokens(a.question), params)
        acts = [ProfilerActivity.CPU] + (
            [ProfilerActivity.CUDA] if torch.cuda.is_available() else []
        )
        prof = profile(activities=acts)  # entered around the first update only
        wall = first_update_s(engine, "hit-profiled", system + tokens(a.question), params, prof)
        extra["profile"] = profile_summary(prof, wall)
    block = engine.runner.block_graphs
    return {
        "shared_prompt_tokens": a.system,
        "question_tokens": a.question,
        "first_update_ms_median": {k: 1000 * v for k, v in med.items()},
        "first_update_ms_all": {k: [1000 * x for x in v] for k, v in timings.items()},
        "speedup": med["miss"] / med["hit"],
        "prefix_cache_hit_rate": stats.get("prefix_cache_hit_rate"),
        "timed_graph_captures": captures,
        "block_graph_replays": block.replays if block is not None else 0,
        **extra,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shape", default="llada2-mini")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--system", type=int, default=2048, help="shared prompt tokens")
    ap.add_argument("--question", type=int, default=32, help="each request's own prompt tokens")
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes for a quick CPU check")
    ap.add_argument("--profile", action="store_true", help="profile one more hit's first update")
    ap.add_argument(
        "--compare-eager-store-steps",
        action="store_true",
        help="measure again with the steps that store K/V run eagerly (as before)",
    )
    ap.add_argument("--quantization", choices=QUANTIZATIONS, default=None, help=QUANTIZATION_HELP)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if a.smoke:
        a.system, a.question, a.gen, a.reps = 64, 8, 8, 1
    engine = Engine.from_random_shape(
        a.shape, device=a.device, max_num_seqs=4, quantization=a.quantization
    )
    out = {"card": torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu",
           "commit": provenance.commit(), "args": vars(a) | {"json": str(a.json)},
           **run(engine, a, seed=0)}  # fmt: skip
    block = engine.runner.block_graphs
    if a.compare_eager_store_steps and block is not None:
        block.graph_store_steps = False
        out["eager_store_steps"] = run(engine, a, seed=1)
    print(json.dumps(out, indent=1))
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
