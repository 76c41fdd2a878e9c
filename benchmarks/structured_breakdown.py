"""Where a constrained sampling step's time goes, without a model: the tool-call schema compiled
for the synthetic 126k-token vocabulary of benchmarks/structured_compile.py (its stages timed:
a first compile child, regex to byte DFA in a child, the lift to tokens), then `choose` and
`observe` of `engine.constrained` on random logits [rows, block, vocab] for every row
constrained: the step's time, split by function (cumulative ms), the torch ops it launches and
the uploads of Python values it makes (each a stream sync on the GPU: the host waits for the
forward), and the time of building the rows (once per iteration batch; chained steps reuse
them). Prints one JSON line per batch.

    python benchmarks/structured_breakdown.py --device cpu --batches 1 32
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from structured_compile import TOOL_CALL, synthetic_vocab  # noqa: E402

from dllmserve.engine.constrained import RequestConstraint, constrained_rows  # noqa: E402
from dllmserve.structured import StructuredOutput  # noqa: E402
from dllmserve.structured.automaton import lift  # noqa: E402
from dllmserve.structured.compiler import MAX_DFA_STATES, _regex, compile_constraint  # noqa: E402
from dllmserve.structured.dfa import build_byte_dfa  # noqa: E402

MASK = -1  # set in main: the logit width's last id, past the synthetic vocabulary
OURS = ("engine/constrained.py", "structured/dp.py")


def compile_stages(tb) -> dict[str, float]:
    """Seconds per compile stage, cold (a fresh process's first compile pays them all)."""
    spec = StructuredOutput(json_schema=TOOL_CALL)
    t0 = time.perf_counter()
    build_byte_dfa("a", "warm-up", 60.0, 10)
    t1 = time.perf_counter()
    dfa = build_byte_dfa(_regex(spec, time.monotonic() + 60), spec.field, 60.0, MAX_DFA_STATES)
    t2 = time.perf_counter()
    lift(dfa, tb, spec.field, time.monotonic() + 60)
    t3 = time.perf_counter()
    compile_constraint(spec, tb, timeout_s=300)
    return {"first_child_s": t1 - t0, "regex_to_dfa_s": t2 - t1, "lift_s": t3 - t2}


def fake_requests(automaton, batch: int, block: int, rng: np.random.Generator, temperature):
    """Requests at the first block of a 128-token answer, a quarter of it committed by
    walking the automaton with random allowed tokens (what the engine's builder reads)."""
    reqs = []
    for _ in range(batch):
        canvas = np.full(128 + 128, MASK, dtype=np.int64)
        state, committed = automaton.start, []
        for _ in range(block // 4):
            allowed = np.flatnonzero(automaton.src == state)
            e = int(rng.choice(allowed))
            ids = np.flatnonzero(automaton.class_of == automaton.cls[e])
            committed.append(int(rng.choice(ids)))
            state = int(automaton.dst[e])
        canvas[128 : 128 + len(committed)] = committed
        reqs.append(SimpleNamespace(
            constraint=RequestConstraint(automaton), block_span=(128, 128 + block),
            canvas=canvas, tokens=SimpleNamespace(mask=MASK), generated=canvas[128:],
            prompt_len=128, gen_length=128,
            params=SimpleNamespace(temperature=temperature, remasking="low_confidence",
                                   logits_eos_inf=False, confidence_eos_eot_inf=False),
        ))  # fmt: skip
    return reqs


def one_step(automaton, batch, block, vocab, device, temperature, rng):
    """Functions building the constrained rows and running a step on them (choose, then
    observe) on fixed random inputs."""
    reqs = fake_requests(automaton, batch, block, rng, temperature)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    logits = torch.randn(batch, block, vocab, device=device).to(dtype)
    x0 = logits.argmax(-1)
    conf = torch.rand(batch, block, device=device, dtype=torch.float64)
    seed = torch.arange(batch, device=device)
    step_ids = torch.zeros(batch, dtype=torch.long, device=device)
    positions = torch.arange(block, device=device).expand(batch, block) + 128
    special = (MASK, vocab - 3, vocab - 2)

    def build():
        return constrained_rows(reqs, block, device)

    def step(rows):
        x, c, _ = rows.choose(logits, x0, conf, conf, seed, step_ids, positions, special)
        rows.observe(x, c > c.median())

    return build, step


def measure(build, step, device, reps: int) -> dict:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = build()
    step(rows)
    sync()
    times, builds = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        rows = build()
        t1 = time.perf_counter()
        step(rows)
        sync()
        builds.append(t1 - t0)
        times.append(time.perf_counter() - t1)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step(rows)
        sync()
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    prof_c = cProfile.Profile()
    prof_c.enable()
    step(build())
    sync()
    prof_c.disable()
    parts = {
        f"{Path(f).name}:{name}": round(1000 * ct, 2)
        for (f, _, name), (_, _, _, ct, _) in pstats.Stats(prof_c).stats.items()
        if any(f.endswith(o) for o in OURS)
    }
    return {
        "step_ms_median": round(1000 * statistics.median(times), 2),
        "build_ms_median": round(1000 * statistics.median(builds), 2),
        "step_torch_ops": sum(1 for e in events if e.cpu_parent is None),
        "step_uploads": sum(1 for e in events if e.name == "aten::lift_fresh"),
        "cumulative_ms": dict(sorted(parts.items(), key=lambda kv: -kv[1])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=126464)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    global MASK
    device = torch.device(a.device)
    tb = synthetic_vocab(a.vocab - 1)
    MASK = a.vocab - 1
    stages = compile_stages(tb)
    automaton = compile_constraint(StructuredOutput(json_schema=TOOL_CALL), tb)
    print(json.dumps({"vocab": tb.vocab_size, "answer_ids": len(tb.ids), **stages,
                      "states": automaton.n_states, "classes": automaton.n_classes,
                      "edges": len(automaton.src)}), flush=True)  # fmt: skip
    rng = np.random.default_rng(0)
    for batch in a.batches:
        build, step = one_step(automaton, batch, a.block, a.vocab, device, a.temperature, rng)
        res = measure(build, step, device, a.reps)
        print(json.dumps({"batch": batch, "device": a.device, **res}), flush=True)


if __name__ == "__main__":
    main()
