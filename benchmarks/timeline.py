"""Per-iteration timeline of the engine: where the GPU waits on the host (issue 27, item 4).

Builds the engine on random weights of a named shape (as `offline.py` does), warms it up, then
records a window of iterations of one generation with the torch profiler and splits the trace
by iteration. The model runner names each iteration's host work with profiler ranges
("dllm.prepare", then "dllm.launch <PHASE>"); every kernel, copy and memset is given to the
iteration whose range launched it (CUDA correlation ids). Per iteration and per phase
(FULL / SELECT / REUSE, MIXED) it reports:

  wall    first device op of this iteration to the first of the next
  busy    union of this iteration's device op intervals
  idle    wall - busy (bubbles inside the iteration plus the gap below)
  gap     the last device op of this iteration to the first of the next: the host's turn
  host    CPU time in the iteration's prepare and launch ranges
  kernels the kernel count, and the top kernels by time

    python benchmarks/timeline.py --json benchmarks/results/timeline.json   # llada-8b, b 1, 32
    python benchmarks/timeline.py --shape llada2-mini --batches 1 32
    python benchmarks/timeline.py --smoke        # CPU: host ops stand in for kernels

On the CPU (`--smoke`, tiny shape) the profiler records CPU activity only, and each top-level
operator inside an iteration's ranges stands in for a kernel, so the same split is exercised.
"""

from __future__ import annotations

import argparse
import bisect
import json
import random
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import provenance
import torch
from offline import abort_all, run_one
from torch.profiler import ProfilerActivity, profile

from dllmserve import SamplingParams, SparseConfig
from dllmserve.engine.config import EngineConfig
from dllmserve.engine.engine import Engine
from dllmserve.models.config import QUANTIZATION_HELP, QUANTIZATIONS
from dllmserve.models.shapes import SHAPES, random_model

DEVICE_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}
LAUNCH_CATS = {"cuda_runtime", "cuda_driver"}
TOP_KERNELS = 8
NAME_WIDTH = 100


@dataclass
class Iteration:
    phase: str
    cpu_spans: list[tuple[float, float]]  # the prepare and launch ranges (us, profiler clock)
    ops: list[tuple[float, float, str, bool]] = field(default_factory=list)  # ts, end, name, kernel

    @property
    def start(self) -> float:
        return min(o[0] for o in self.ops)

    @property
    def end(self) -> float:
        return max(o[1] for o in self.ops)

    def busy(self) -> float:
        """Length of the union of the device op intervals."""
        total, reach = 0.0, float("-inf")
        for ts, end, _, _ in sorted(self.ops):
            if end > reach:
                total += end - max(ts, reach)
                reach = end
        return total


def iterations(trace: dict, on_gpu: bool) -> tuple[list[Iteration], dict[str, int]]:
    """The trace's iterations in launch order (those that ran device ops), and counts of the
    device ops no iteration launched ("unattributed") and of those whose launch the trace
    lacks, given to the iteration of the device op before them ("inferred": one stream runs
    its ops in launch order)."""
    events = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    marks = sorted(
        (e for e in events if e.get("cat") == "user_annotation" and e["name"].startswith("dllm.")),
        key=lambda e: e["ts"],
    )
    its: list[Iteration] = []
    pending: list[tuple[float, float]] = []
    for m in marks:
        span = (m["ts"], m["ts"] + m["dur"])
        if m["name"] == "dllm.prepare":
            pending.append(span)
        else:
            its.append(Iteration(m["name"].split(" ", 1)[1], [*pending, span]))
            pending = []
    starts = [it.cpu_spans[0][0] for it in its]

    def owner(ts: float) -> Iteration | None:
        i = bisect.bisect_right(starts, ts) - 1
        return its[i] if i >= 0 and ts <= its[i].cpu_spans[-1][1] else None

    counts = {"unattributed": 0, "inferred": 0}
    last: Iteration | None = None
    for e, launched_at in sorted(_device_ops(events, on_gpu), key=lambda p: p[0]["ts"]):
        it = owner(launched_at) if launched_at is not None else last
        if it is None:
            counts["unattributed"] += 1
            continue
        counts["inferred"] += launched_at is None
        kernel = e.get("cat") in ("kernel", "cpu_op")
        it.ops.append((e["ts"], e["ts"] + e["dur"], e["name"][:NAME_WIDTH], kernel))
        last = it
    return [it for it in its if it.ops], counts


def _device_ops(events: list[dict], on_gpu: bool):
    """(device op, CPU time of its launch): kernels, copies and memsets by correlation id on
    the GPU; on the CPU, the top-level operators themselves."""
    if on_gpu:
        launch = {
            e["args"]["correlation"]: e["ts"]
            for e in events
            if e.get("cat") in LAUNCH_CATS and "correlation" in e.get("args", {})
        }
        for e in events:
            if e.get("cat") in DEVICE_CATS:
                yield e, launch.get(e.get("args", {}).get("correlation"))
        return
    reach = float("-inf")
    for e in sorted(
        (e for e in events if e.get("cat") == "cpu_op"), key=lambda e: (e["ts"], -e["dur"])
    ):
        if e["ts"] >= reach:  # not nested in the operator before it
            reach = e["ts"] + e["dur"]
            yield e, e["ts"]


def per_iteration(its: list[Iteration]) -> list[dict]:
    """Each iteration's numbers; the last one of the window has no next and is left out."""
    rows = []
    for it, nxt in zip(its, its[1:], strict=False):
        wall, busy = nxt.start - it.start, it.busy()
        by_name: dict[str, float] = defaultdict(float)
        for ts, end, name, kernel in it.ops:
            if kernel:
                by_name[name] += end - ts
        rows.append({
            "phase": it.phase,
            "wall_us": wall,
            "busy_us": busy,
            "idle_us": wall - busy,
            "gap_us": max(0.0, nxt.start - it.end),
            "host_us": sum(e - s for s, e in it.cpu_spans),
            "kernels": sum(1 for o in it.ops if o[3]),
            "kernel_us": dict(by_name),
        })  # fmt: skip
    return rows


def by_phase(rows: list[dict]) -> dict[str, dict]:
    """Mean numbers per phase and its top kernels (mean us per iteration)."""
    out = {}
    for phase in sorted({r["phase"] for r in rows}):
        rs = [r for r in rows if r["phase"] == phase]
        n = len(rs)
        mean = {k: sum(r[k] for r in rs) / n for k in ("wall_us", "busy_us", "idle_us", "gap_us",
                                                          "host_us", "kernels")}  # fmt: skip
        kern: dict[str, float] = defaultdict(float)
        for r in rs:
            for name, us in r["kernel_us"].items():
                kern[name] += us / n
        top = sorted(kern.items(), key=lambda kv: -kv[1])[:TOP_KERNELS]
        out[phase] = {
            "iterations": n,
            **mean,
            "idle_pct": 100 * mean["idle_us"] / mean["wall_us"] if mean["wall_us"] else 0.0,
            "top_kernels": [{"name": k, "us": us} for k, us in top],
        }
    return out


def build_engine(shape: str, batches: list[int], a, dev: torch.device) -> Engine:
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    print(f"building random {shape} on {dev} ...", flush=True)
    model = random_model(SHAPES[shape], dtype, dev, quantization=a.quantization)
    config = EngineConfig(
        max_num_seqs=max(batches),
        max_num_batched_tokens=max(batches) * (a.prompt + a.gen),
        enforce_eager=a.eager,
        num_cache_pages=None if dev.type == "cuda" else 4096,
        quantization=a.quantization,
    )
    return Engine(model, None, config, model_name=shape)


def record(engine: Engine, shape: str, batch: int, a) -> dict:
    """Warm up on these shapes, then profile iterations [skip, skip + iters) of a fresh run."""
    sparse = None
    if not engine.model.cfg.block_diffusion:  # sparse attention is refused there
        sparse = SparseConfig(
            retention_ratio=a.ratio, delay_step=a.delay, default_block_len=a.block
        )
    run_one(engine, shape, a.prompt, batch, sparse, a.gen, a.steps, a.block, 2 * a.block, 0)
    unprofiled = window(engine, batch, sparse, a)
    acts = [ProfilerActivity.CPU]
    if engine.device.type == "cuda":
        acts.append(ProfilerActivity.CUDA)
    prof = profile(activities=acts)
    profiled = window(engine, batch, sparse, a, prof)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        trace = json.loads(path.read_text())
    its, counts = iterations(trace, engine.device.type == "cuda")
    rows = per_iteration(its)
    span = sum(r["wall_us"] for r in rows)
    busy = sum(r["busy_us"] for r in rows)
    return {
        "shape": shape,
        "batch": batch,
        "mode": "dense" if sparse is None else f"r={sparse.retention_ratio}",
        "window_us": span,
        "busy_us": busy,
        "idle_pct": 100 * (span - busy) / span if span else 0.0,
        # wall per engine step of the window with and without the profiler: its own cost
        "step_us": unprofiled,
        "profiled_step_us": profiled,
        "unattributed_ops": counts["unattributed"],
        "inferred_ops": counts["inferred"],
        "phases": by_phase(rows),
        "iterations": [{k: v for k, v in r.items() if k != "kernel_us"} for r in rows],
    }


def window(
    engine: Engine, batch: int, sparse: SparseConfig | None, a, prof: profile | None = None
) -> float:
    """Start a fresh generation, step past its first `skip` steps, then run `iters` steps
    (recorded by `prof` when given); their mean wall time per engine step in us."""
    rng = random.Random(batch)
    mask, vocab = engine.tokens.mask, engine.model.cfg.vocab_size
    params = SamplingParams(
        gen_length=a.gen, steps=a.steps, block_length=a.block, stop_at_eos=False
    )
    for i in range(batch):
        ids = [rng.randrange(vocab) for _ in range(a.prompt)]
        engine.add_request(f"t{i}", [t if t != mask else t - 1 for t in ids], params, sparse)
    for _ in range(a.skip):
        engine.step()
    sync = torch.cuda.synchronize if engine.device.type == "cuda" else lambda: None
    sync()
    if prof is not None:
        prof.start()
    start = time.perf_counter()
    steps = [engine.step() for _ in range(a.iters) if engine.has_unfinished()]
    sync()
    elapsed = time.perf_counter() - start
    if prof is not None:
        prof.stop()
    abort_all(engine)
    return 1e6 * elapsed / max(1, len(steps))


def print_table(runs: list[dict]) -> None:
    print("\n| shape | batch | phase | iters | wall us | busy us | idle us | idle % | gap us "
          "| host us | kernels |")  # fmt: skip
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run in runs:
        for phase, p in run["phases"].items():
            print(f"| {run['shape']} | {run['batch']} | {phase} | {p['iterations']} "
                  f"| {p['wall_us']:.0f} | {p['busy_us']:.0f} | {p['idle_us']:.0f} "
                  f"| {p['idle_pct']:.1f} | {p['gap_us']:.0f} | {p['host_us']:.0f} "
                  f"| {p['kernels']:.0f} |")  # fmt: skip
    for run in runs:
        for phase, p in run["phases"].items():
            print(f"\n{run['shape']} batch {run['batch']} {phase}: top kernels (us / iteration)")
            for k in p["top_kernels"]:
                print(f"  {k['us']:9.1f}  {k['name']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shape", default=None, choices=sorted(SHAPES), help="default llada-8b")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=256)
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: --gen)")
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--ratio", type=float, default=0.5, help="sparse retention ratio")
    ap.add_argument("--delay", type=int, default=1)
    ap.add_argument("--skip", type=int, default=None, help="steps before the window (one block)")
    ap.add_argument("--iters", type=int, default=None, help="steps profiled (two blocks + 1)")
    ap.add_argument("--eager", action="store_true", help="no CUDA graphs")
    ap.add_argument("--quantization", choices=QUANTIZATIONS, default=None, help=QUANTIZATION_HELP)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes for a quick CPU check")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if a.smoke:
        a.device, a.batches, a.prompt, a.gen, a.block = "cpu", [1, 2], 8, 16, 8
    a.shape = a.shape or ("tiny" if a.smoke else "llada-8b")
    a.steps = a.steps or a.gen
    a.skip = a.block if a.skip is None else a.skip
    a.iters = 2 * a.block + 1 if a.iters is None else a.iters
    dev = torch.device(a.device)
    engine = build_engine(a.shape, a.batches, a, dev)
    runs = []
    for b in a.batches:
        runs.append(record(engine, a.shape, b, a))
        print(json.dumps({k: v for k, v in runs[-1].items() if k != "iterations"}), flush=True)
    print_table(runs)
    if a.json:
        card = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
        doc = {"card": card, "commit": provenance.commit(), "args": vars(a) | {"json": str(a.json)},
               "runs": runs}  # fmt: skip
        a.json.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
