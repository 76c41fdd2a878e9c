"""Time to first update of a block-diffusion request whose prompt shares a long system prompt
with an earlier one: with prefix caching (its full prompt blocks' K/V adopted from the cache)
against without (prefilled again), on the same random-weights engine (LLaDA2.0-mini's shape by
default). Each timed request runs alone, after an untimed request that fills the cache.

    python benchmarks/prefix_cache.py --json out.json                      # GPU, llada2-mini
    python benchmarks/prefix_cache.py --shape tiny-llada2 --device cpu --smoke   # CPU check
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import provenance
import torch

from dllmserve import SamplingParams
from dllmserve.engine.engine import Engine


def first_update_s(engine: Engine, rid: str, prompt: list[int], params: SamplingParams) -> float:
    """Seconds from add_request to the request's first step update; the request then runs on
    to its end (untimed) so the next one starts alone."""
    start = time.perf_counter()
    engine.add_request(rid, prompt, params)
    first = None
    while engine.has_unfinished():
        updates = engine.step()
        if first is None and any(u.request_id == rid for u in updates):
            first = time.perf_counter() - start
    assert first is not None
    return first


def run(engine: Engine, a) -> dict:
    rng = random.Random(0)
    vocab = engine.limits.vocab_size  # ids the tokenizer knows
    avoid = {engine.tokens.mask, *engine.tokens.stop}

    def tokens(n: int) -> list[int]:
        return [t for t in (rng.randrange(vocab) for _ in range(4 * n)) if t not in avoid][:n]

    system = tokens(a.system)
    params = SamplingParams(gen_length=a.gen, steps=a.gen, stop_at_eos=False)
    timings: dict[str, list[float]] = {"hit": [], "miss": []}
    for i in range(a.reps + 1):  # the first pair warms up (compiles, captures), untimed
        first_update_s(engine, f"fill{i}", system + tokens(a.question), params)
        hit = first_update_s(engine, f"hit{i}", system + tokens(a.question), params)
        miss = first_update_s(engine, f"miss{i}", tokens(a.system) + tokens(a.question), params)
        if i:
            timings["hit"].append(hit)
            timings["miss"].append(miss)
    med = {k: statistics.median(v) for k, v in timings.items()}
    stats = engine.stats()
    return {
        "shared_prompt_tokens": a.system,
        "question_tokens": a.question,
        "first_update_ms_median": {k: 1000 * v for k, v in med.items()},
        "first_update_ms_all": {k: [1000 * x for x in v] for k, v in timings.items()},
        "speedup": med["miss"] / med["hit"],
        "prefix_cache_hit_rate": stats.get("prefix_cache_hit_rate"),
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
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if a.smoke:
        a.system, a.question, a.gen, a.reps = 64, 8, 8, 1
    engine = Engine.from_random_shape(a.shape, device=a.device, max_num_seqs=4)
    out = {"card": torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu",
           "commit": provenance.commit(), "args": vars(a) | {"json": str(a.json)},
           **run(engine, a)}  # fmt: skip
    print(json.dumps(out, indent=1))
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
