"""Per-step cost of structured outputs: the engine step with every request constrained by a
tool-call JSON schema against the same step unconstrained, at batch 1 and 32, in one run on the
same random-weights model (LLaDA-8B's shape by default, bf16 on the GPU).

The shape's own tokenizer is byte-level (256 byte tokens), whose automaton is far smaller than a
real 126k-token vocabulary's; the constrained rows therefore use the tool-call schema compiled
for the synthetic byte-level vocabulary of benchmarks/structured_compile.py laid over the
model's ids (every id but the mask and stop tokens writes a piece of text), so the DP walks an
automaton of the real size (hundreds of states and token classes, thousands of edges) over the
full logit width. Prints one JSON line per (batch, mode) and a table with the overhead.

    python benchmarks/structured_overhead.py                           # GPU, LLaDA-8B shape
    python benchmarks/structured_overhead.py --shape llada2-mini       # GPU, block diffusion
    python benchmarks/structured_overhead.py --shape tiny --device cpu --smoke   # CPU check
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from structured_compile import TOOL_CALL, synthetic_vocab  # noqa: E402

from dllmserve.engine.config import EngineConfig  # noqa: E402
from dllmserve.engine.constrained import RequestConstraint  # noqa: E402
from dllmserve.engine.engine import Engine  # noqa: E402
from dllmserve.sampling_params import SamplingParams  # noqa: E402
from dllmserve.structured import StructuredOutput  # noqa: E402
from dllmserve.structured.automaton import TokenAutomaton  # noqa: E402
from dllmserve.structured.compiler import compile_constraint  # noqa: E402
from dllmserve.structured.vocab import TokenBytes  # noqa: E402


@dataclass
class Result:
    shape: str
    batch: int
    mode: str  # "free" or "tool-call schema"
    steps_timed: int
    step_ms_mean: float
    step_ms_median: float
    answers_valid: int | None = None  # constrained: answers that validate (of `batch`)


def model_vocab(engine: Engine, size: int) -> TokenBytes:
    """The synthetic vocabulary's pieces laid over the model's ids (the special ones skipped)."""
    special = {engine.tokens.mask, *engine.tokens.stop}
    special |= set(getattr(engine.tokenizer, "all_special_ids", []) or [])
    ids = np.array([i for i in range(size) if i not in special], dtype=np.int64)
    syn = synthetic_vocab(len(ids) + 2)
    n = min(len(ids), len(syn.ids))
    return TokenBytes(
        ids=ids[:n], data=syn.data[: syn.offsets[n]], offsets=syn.offsets[: n + 1],
        vocab_size=size, stop_ids=tuple(sorted(engine.tokens.stop)),
        fingerprint=f"synthetic-over-{size}",
    )  # fmt: skip


def run(engine: Engine, batch: int, automaton: TokenAutomaton | None, a) -> tuple[list, list]:
    """One batch of requests to the end; (step times in s, final token ids per request)."""
    rng = random.Random(batch)
    params = SamplingParams(gen_length=a.gen, steps=a.steps, block_length=a.block,
                            stop_at_eos=False, seed=1)  # fmt: skip
    vocab = min(256, engine.limits.vocab_size)
    for i in range(batch):
        req = engine.make_request(f"r{i}", [rng.randrange(vocab) for _ in range(a.prompt)], params)
        req.constraint = RequestConstraint(automaton) if automaton is not None else None
        engine.add(req)
    times, outs = [], {}
    while engine.has_unfinished():
        t0 = time.perf_counter()
        updates = engine.step()  # ends with the device-to-host copy: a sync point
        times.append(time.perf_counter() - t0)
        outs.update({u.request_id: u.output for u in updates if u.finished})
    return times[a.skip :], [outs[f"r{i}"] for i in range(batch)]


def valid(automaton: TokenAutomaton, token_ids: list[int]) -> bool:
    """The whole canvas (the answer, then the stop-token fill) is accepted: the answer is the
    schema's JSON. Checked through the automaton (the synthetic ids have no tokenizer)."""
    state = automaton.walk(automaton.start, token_ids)
    return state >= 0 and int(automaton.dist[state]) == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shape", default="llada-8b")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--skip", type=int, default=4, help="first steps of each run not timed")
    ap.add_argument("--eager", action="store_true", help="no CUDA graphs")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes for a quick CPU check")
    a = ap.parse_args()
    if a.smoke:
        a.batches, a.prompt, a.gen, a.steps, a.block, a.skip = [1, 2], 8, 96, 24, 32, 1
    cfg = EngineConfig(device=a.device, max_num_seqs=max(a.batches), enforce_eager=a.eager,
                       max_num_batched_tokens=max(a.batches) * (a.prompt + a.gen),
                       num_cache_pages=None if a.device.startswith("cuda") else 2048)  # fmt: skip
    print(f"building random {a.shape} on {a.device} ...", flush=True)
    engine = Engine.from_random_shape(a.shape, cfg)
    tb = model_vocab(engine, engine.limits.vocab_size)
    t0 = time.perf_counter()
    automaton = compile_constraint(StructuredOutput(json_schema=TOOL_CALL), tb, timeout_s=300)
    print(f"tool-call schema over {len(tb.ids)} answer ids: compiled in "
          f"{time.perf_counter() - t0:.2f} s; {automaton.n_states} states, "
          f"{automaton.n_classes} classes, {len(automaton.src)} edges, shortest answer "
          f"{automaton.min_length} tokens", flush=True)  # fmt: skip
    if automaton.min_length > a.gen:
        raise SystemExit(f"--gen {a.gen} is shorter than the schema's shortest answer")
    results = []
    for batch in a.batches:
        run(engine, batch, None, a)  # warm-up: compiles kernels, captures this batch's graphs
        run(engine, batch, automaton, a)
        for mode, auto in (("free", None), ("tool-call schema", automaton)):
            times, outs = run(engine, batch, auto, a)
            ok = sum(valid(auto, o.token_ids) for o in outs) if auto is not None else None
            res = Result(a.shape, batch, mode, len(times), 1000 * statistics.fmean(times),
                         1000 * statistics.median(times), ok)  # fmt: skip
            results.append(res)
            print(json.dumps(asdict(res)), flush=True)
    print_table(results)


def print_table(results: list[Result]) -> None:
    print(f"\n{'batch':>5} {'free ms':>9} {'constrained ms':>15} {'overhead':>9} {'valid':>7}")
    for free, con in zip(results[::2], results[1::2], strict=True):
        extra = 100 * (con.step_ms_median / free.step_ms_median - 1)
        print(f"{free.batch:>5} {free.step_ms_median:>9.2f} {con.step_ms_median:>15.2f} "
              f"{extra:>8.1f}% {con.answers_valid:>3}/{con.batch}")  # fmt: skip


if __name__ == "__main__":
    main()
