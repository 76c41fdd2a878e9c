"""Tokens committed per forward under threshold decoding, and the tokens/s that projects.

    python benchmarks/tokens_per_forward.py --json tpf.json --markdown tpf.md      # CPU, n=16
    python benchmarks/tokens_per_forward.py --n 2 --tasks recall --contexts 128     # a smoke run
    python benchmarks/tokens_per_forward.py --render tpf.json --gpu-json other.json # re-project

On the shipped tiny LLaDA's held-out tasks (copy, add, recall at each context) it decodes every
example with one token per step (`threshold` None, steps = gen_length) and with each
`threshold` (every masked token above it is committed, at least one per step), dense and
with the best sparse config of docs/quality.md (retention 0.7, delay 5, head_select on).
Greedy, block 32, gen_length as benchmarks/quality.py.

Per cell it reports exact-match accuracy, forwards per request, and
- committed per forward: canvas positions the forwards decided (the answer, its stop token
  and whatever else the sampler committed in the blocks that ran; the EOS fill written after an
  early stop is not counted, no forward decided it) over forwards. Exactly 1 without a
  threshold, by construction of the schedule.
- answer per forward: the answer's tokens (before its first stop token) over forwards.

The projection turns the phase mix (FULL / SELECT / REUSE forwards) and committed tokens per
forward into tokens/s at the LLaDA-8B shape with the per-phase step times that
benchmarks/offline.py measured on a GPU (`--gpu-json`; dense rows for dense, r=0.5 rows for
sparse). Batch 1: step times interpolated linearly in prompt length between the prompt-128
and prompt-2048 rows (copy and add count as 128). Batch 32: prompt-128 cells only (that is
the one prompt measured at batch 32). It is a projection, not a measurement.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import provenance
import torch
from quality import BLOCK, GEN

from dllmserve import LLM, SamplingParams
from dllmserve.assets import default_model_path, tasks
from dllmserve.sparse.state import SparseConfig

THRESHOLDS: tuple[float | None, ...] = (None, 0.99, 0.95, 0.9, 0.8, 0.7, 0.5)
# docs/quality.md: the sparse config closest to dense on every task (long recall 0.88-0.94
# against dense 0.84-1.00; 0.5 loses about a tenth of lookups more).
SPARSE = SparseConfig(
    retention_ratio=0.7, delay_step=5, head_select=True, layer_wise=False, default_block_len=BLOCK
)
MODES: dict[str, SparseConfig | None] = {"dense": None, "r=0.7 d=5 hs=on": SPARSE}
GPU_MODE = {"dense": "dense", "r=0.7 d=5 hs=on": "r=0.5"}  # the measured row standing in
GPU_JSON = Path(__file__).resolve().parent / "results" / "offline_h200_cf18c9d.json"
SHORT, LONG = 128, 2048  # the prompt lengths the offline benchmark measured
PHASES = ("FULL", "SELECT", "REUSE")


@dataclass
class Tally:
    """One request's forwards by phase and the canvas positions its forwards decided."""

    phases: Counter = field(default_factory=Counter)
    committed: int = 0


def decode(
    llm: LLM, prompts: list[str], params: list[SamplingParams], configs: list
) -> list[tuple[dict, Tally]]:
    """`LLM.generate`'s loop, also tallying each step update's phase and commits."""
    eng = llm.engine
    ids = [f"tpf-{i}" for i in range(len(prompts))]
    for rid, p, sp, sc in zip(ids, prompts, params, configs, strict=True):
        eng.add(eng.make_request(rid, p, sp, sc))
    tallies = {rid: Tally() for rid in ids}
    outputs: dict[str, dict] = {}
    while len(outputs) < len(ids):
        for u in eng.step():
            t = tallies[u.request_id]
            t.phases[u.phase] += u.forward_passes
            block_end = (u.block_index + 1) * u.block_length
            t.committed += sum(p < block_end for p in u.positions)  # not the EOS fill
            if u.finished:
                outputs[u.request_id] = u.output.as_dict()
    return [(outputs[rid], tallies[rid]) for rid in ids]


def params_for(task: str, threshold: float | None) -> SamplingParams:
    g = GEN[task]
    return SamplingParams(
        temperature=0.0, gen_length=g, steps=g, block_length=BLOCK, threshold=threshold
    )


def summarize(
    examples: list[tasks.Example], results: list[tuple[dict, Tally]], stops: set[int]
) -> dict:
    """Accuracy, forwards and tokens per forward over one (mode, threshold) group."""
    forwards = sum(o["num_forward_passes"] for o, _ in results)
    committed = sum(t.committed for _, t in results)
    answer = sum(next((i for i, x in enumerate(o["token_ids"]) if x in stops),
                      len(o["token_ids"])) for o, _ in results)  # fmt: skip
    phases = sum((t.phases for _, t in results), Counter())
    n = len(examples)
    pairs = zip(examples, results, strict=True)
    correct = sum(tasks.is_correct(ex, o["text"]) for ex, (o, _) in pairs)
    return {
        "accuracy": correct / n,
        "forwards_per_request": forwards / n,
        "committed_per_forward": committed / forwards,
        "answer_per_forward": answer / forwards,
        "phases": {p: phases[p] / n for p in PHASES},
        "exact_one_per_forward": all(t.committed == o["num_forward_passes"] for o, t in results),
        "n": n,
    }


_LLM: LLM | None = None


def _init(model: str, device: str, threads: int) -> None:
    global _LLM
    torch.set_num_threads(threads)
    _LLM = LLM(model, device=device)


def run_job(task: str, context: int, mode: str, n: int, thresholds: tuple) -> dict:
    """Every threshold of one (task, context, mode), in one batch of requests."""
    assert _LLM is not None
    t0 = time.monotonic()
    examples = tasks.held_out(task, n, context)
    prompts = [tasks.chat_prompt(ex.question) for ex in examples] * len(thresholds)
    params = [params_for(task, th) for th in thresholds for _ in examples]
    results = decode(_LLM, prompts, params, [MODES[mode]] * len(prompts))
    stops = set(_LLM.engine.tokens.stop)
    rows = []
    for i, th in enumerate(thresholds):
        group = results[i * n : (i + 1) * n]
        rows.append({"threshold": th, **summarize(examples, group, stops)})
    name = f"recall@{context}" if task == "recall" else task
    return {"cell": name, "task": task, "context": context, "prompt": context or SHORT,
            "mode": mode, "rows": rows, "seconds": round(time.monotonic() - t0, 1)}  # fmt: skip


# ---- projection -------------------------------------------------------------------------


def load_gpu(path: Path) -> dict:
    """The LLaDA-8B rows of an offline.py JSON: {(prompt, batch, mode): step_ms}."""
    doc = json.loads(path.read_text())
    rows = {(r["prompt"], r["batch"], r["mode"]): r["step_ms"] for r in doc["results"]
            if r["shape"] == "llada-8b"}  # fmt: skip
    for key in [(SHORT, 1, "dense"), (LONG, 1, "dense"), (SHORT, 1, "r=0.5"), (LONG, 1, "r=0.5")]:
        if key not in rows:
            raise ValueError(f"{path}: no llada-8b row for prompt/batch/mode {key}")
    return {"card": doc.get("card"), "commit": doc.get("commit"), "date": doc.get("date"),
            "file": path.name, "rows": rows}  # fmt: skip


def step_ms(gpu: dict, prompt: int, batch: int, mode: str) -> dict[str, float] | None:
    """Per-phase step ms at `prompt` (linear between the measured prompts); None if unmeasured."""
    rows = gpu["rows"]
    prompt = min(max(prompt, SHORT), LONG)
    if (prompt, batch, mode) in rows:
        return rows[(prompt, batch, mode)]
    lo, hi = rows.get((SHORT, batch, mode)), rows.get((LONG, batch, mode))
    if lo is None or hi is None:
        return None
    w = (prompt - SHORT) / (LONG - SHORT)
    return {p: lo[p] + w * (hi[p] - lo[p]) for p in lo}


def projected_tokens_per_s(
    committed_per_forward: float, phases: dict[str, float], ms: dict[str, float], batch: int
) -> float:
    """Tokens/s of `batch` requests in lockstep, each with this phase mix per request."""
    forwards = sum(phases.values())
    mean_ms = sum(c * ms[p] for p, c in phases.items() if c) / forwards
    return batch * committed_per_forward * 1000.0 / mean_ms


def project(results: list[dict], gpu: dict) -> None:
    """Adds `projected` and `projected_answer` {"b1", "b32"} tokens/s to every row: committed
    canvas tokens and answer tokens (None where no step time was measured)."""
    for job in results:
        for row in job["rows"]:
            row["projected"], row["projected_answer"] = {}, {}
            for batch in (1, 32):
                ms = step_ms(gpu, job["prompt"], batch, GPU_MODE[job["mode"]])
                ok = ms is not None and all(ms.get(p) for p, c in row["phases"].items() if c)
                tps = (
                    projected_tokens_per_s(row["committed_per_forward"], row["phases"], ms, batch)
                    if ok
                    else None
                )
                share = row["answer_per_forward"] / row["committed_per_forward"]
                row["projected"][f"b{batch}"] = tps
                row["projected_answer"][f"b{batch}"] = tps * share if tps else None


# ---- report -----------------------------------------------------------------------------


def _th(t: float | None) -> str:
    return "None (1/step)" if t is None else f"{t}"


def _table(results: list[dict], cell_text) -> list[str]:
    """One row per (mode, threshold), one column per cell; `cell_text(row)` fills it."""
    cells = list(dict.fromkeys(j["cell"] for j in results))
    by = {(j["cell"], j["mode"]): j["rows"] for j in results}
    out = ["| mode | threshold | " + " | ".join(cells) + " |", "|---|---|" + "---|" * len(cells)]
    for mode in MODES:
        present = [by[(c, mode)] for c in cells if (c, mode) in by]
        for i, first in enumerate(present[0] if present else []):
            vals = [cell_text(by[(c, mode)][i]) if (c, mode) in by else "" for c in cells]
            out.append(f"| {mode} | {_th(first['threshold'])} | " + " | ".join(vals) + " |")
    return out


def _pair(d: dict) -> str:
    return f"{d['b1']:.0f}" + (f" / {d['b32']:.0f}" if d["b32"] else "")


def markdown(results: list[dict], meta: dict) -> str:
    """The run's details, then accuracy and tokens per forward, then the projections."""

    def measured(r: dict) -> str:
        a, c, t = r["accuracy"], r["committed_per_forward"], r["answer_per_forward"]
        return f"{a:.2f} · {c:.1f} · {t:.1f}"

    return "\n".join(
        [f"- {k}: {v}" for k, v in meta.items()]
        + ["", "Accuracy · committed tokens per forward · answer tokens per forward:", ""]
        + _table(results, measured)
        + ["", "Projected committed tokens/s at the LLaDA-8B shape, batch 1 / batch 32:", ""]
        + _table(results, lambda r: _pair(r["projected"]))
        + ["", "Projected answer tokens/s at the LLaDA-8B shape, batch 1 / batch 32:", ""]
        + _table(results, lambda r: _pair(r["projected_answer"]))
        + [""]
    )


def machine() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            name = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"{name}, {os.cpu_count()} CPUs"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(default_model_path()))
    ap.add_argument("--device", default="cpu", help="where the model runs (cpu, cuda)")
    ap.add_argument("--n", type=int, default=16, help="examples per cell (>= 1)")
    ap.add_argument("--tasks", default="copy,add,recall", help="of copy, add, recall")
    ap.add_argument("--contexts", default="128,512,1024,2048", help="recall prompt lengths")
    ap.add_argument("--thresholds", default=",".join("none" if t is None else str(t)
                                                      for t in THRESHOLDS))  # fmt: skip
    ap.add_argument("--procs", type=int, default=1, help="worker processes, 1 or 2")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--gpu-json", type=Path, default=GPU_JSON, help="offline.py's JSON")
    ap.add_argument("--render", type=Path, default=None,
                    help="a saved --json: project and print it again, no decoding")  # fmt: skip
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--markdown", type=Path, default=None)
    a = ap.parse_args(argv)
    try:
        a.tasks = tuple(a.tasks.split(","))
        a.contexts = tuple(int(c) for c in a.contexts.split(","))
        a.thresholds = tuple(None if t == "none" else float(t) for t in a.thresholds.split(","))
    except ValueError as e:
        ap.error(f"--contexts and --thresholds take comma-separated numbers: {e}")
    if a.n < 1 or a.procs not in (1, 2) or a.threads < 1:
        ap.error(f"--n must be >= 1, --procs 1 or 2, --threads >= 1; got {a.n}, {a.procs}, "
                 f"{a.threads}")  # fmt: skip
    if bad := [t for t in a.tasks if t not in tasks.TASKS]:
        ap.error(f"--tasks: unknown {bad}; known: {', '.join(tasks.TASKS)}")
    if bad := [c for c in a.contexts if c not in tasks.CONTEXTS]:
        ap.error(f"--contexts: {bad} not among {list(tasks.CONTEXTS)}")
    if bad := [t for t in a.thresholds if t is not None and not 0.0 <= t <= 1.0]:
        ap.error(f"--thresholds: {bad} outside [0, 1]")
    return a


def measure(a: argparse.Namespace, gpu: dict) -> tuple[list[dict], dict]:
    """Decode every (cell, mode) job, longest prompts first, in `a.procs` processes."""
    cells = [(t, 0) for t in a.tasks if t != "recall"]
    cells += [("recall", c) for c in a.contexts if "recall" in a.tasks]
    jobs = sorted(((t, c, m) for t, c in cells for m in MODES), key=lambda j: -j[1])
    meta = {
        "model": Path(a.model).name,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git commit": provenance.commit(),
        "machine": machine() if a.device == "cpu" else torch.cuda.get_device_name(),
        "command": "python " + " ".join(sys.argv),
        "examples per cell": a.n,
        "processes x torch threads": f"{a.procs} x {a.threads}",
        "sampling": f"greedy, block {BLOCK}, steps = gen_length ({GEN}), stop_at_eos",
        "sparse": "r=0.7 d=5 hs=on lw=off",
    }
    t0 = time.monotonic()
    args = [(t, c, m, a.n, a.thresholds) for t, c, m in jobs]
    if a.procs == 1:
        _init(a.model, a.device, a.threads)
        results = [run_job(*x) for x in args]
    else:
        init = (a.model, a.device, a.threads)
        with ProcessPoolExecutor(a.procs, initializer=_init, initargs=init) as ex:
            results = list(ex.map(run_job, *zip(*args, strict=True)))
    order = {c: i for i, c in enumerate(cells)}
    results.sort(key=lambda j: (order[(j["task"], j["context"])], list(MODES).index(j["mode"])))
    meta["seconds"] = round(time.monotonic() - t0)
    return results, meta


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    try:
        gpu = load_gpu(a.gpu_json)
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"error: --gpu-json: {e}") from None
    if a.render:
        try:
            saved = json.loads(a.render.read_text())
            results, meta = saved["results"], saved["meta"]
        except (OSError, ValueError, KeyError) as e:
            raise SystemExit(f"error: --render: not a saved run: {e!r}") from None
    else:
        results, meta = measure(a, gpu)
    meta["projection"] = f"{gpu['card']}, {gpu['file']} (commit {gpu['commit']}, {gpu['date']})"
    project(results, gpu)
    if a.json:
        rows = [{"prompt": p, "batch": b, "mode": m, "step_ms": ms}
                for (p, b, m), ms in gpu["rows"].items()]  # fmt: skip
        gpu_out = {**{k: v for k, v in gpu.items() if k != "rows"}, "rows": rows}
        doc = {"meta": meta, "gpu": gpu_out, "results": results}
        a.json.write_text(json.dumps(doc, indent=1) + "\n")
    md = markdown(results, meta)
    print(md)
    if a.markdown:
        a.markdown.write_text(md)


if __name__ == "__main__":
    main()
