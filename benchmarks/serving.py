"""Serving benchmark: the whole service (Redis, scheduler, workers) under a request stream.

Requests arrive with gamma-distributed gaps (shape `--burstiness`; 1.0 is Poisson) at each rate
in `--rates` (req/s; `inf` sends all at once: saturation), a fixed `--num-requests` per rate, as
vLLM's serving benchmark does. For each rate it reports the time to the first step update
(client side), the time to completion p50/p99, request and token throughput, goodput (requests
completing within `--slo-s`), and how long after a worker admitted a request its first update
reached the client (client's first-update time minus the scheduler's queued time). Before the
service starts, the offline engine runs the same requests at once in this process: the service's
saturation throughput is reported against it.

    python benchmarks/serving.py                                  # CPU, the shipped tiny model
    python benchmarks/serving.py --model /path/LLaDA-8B --device cuda --workers 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dllmserve import LLM, SamplingParams, SparseConfig  # noqa: E402
from dllmserve.client import AsyncClient, Client  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


async def one(client: AsyncClient, prompt: str, args, delay: float) -> dict:
    await asyncio.sleep(delay)
    sent = time.perf_counter()
    first = None
    done = None
    async for ev in client.generate(
        prompt, sampling_params=sampling(args), sparse_config=sparse(args)
    ):
        kind = ev.WhichOneof("event")
        if kind == "step" and first is None:
            first = time.perf_counter()
        elif kind == "completed":
            done = ev.completed
    end = time.perf_counter()
    return {
        "ttfu_s": (first or end) - sent,
        "latency_s": end - sent,
        "queued_s": done.timings.queued_ms / 1000,
        "steps": done.usage.steps,
        "canvas_tokens": len(done.token_ids),
    }


def sampling(args) -> dict:
    # every request runs all its steps, so the service and the offline engine do the same work
    return {"gen_length": args.gen, "steps": args.steps, "block_length": args.block,
            "stop_at_eos": False}  # fmt: skip


def sparse(args) -> dict | None:
    if args.ratio is None:
        return None
    return {"enabled": True, "retention_ratio": args.ratio, "delay_step": 1,
            "default_block_len": args.block}  # fmt: skip


async def run_rate(target: str, prompts: list[str], rate: float, args) -> dict:
    rng = random.Random(0)
    t, delays = 0.0, []
    for _ in prompts:
        delays.append(t)
        if rate != float("inf"):
            t += rng.gammavariate(args.burstiness, 1.0 / (rate * args.burstiness))
    client = AsyncClient(target)
    start = time.perf_counter()
    res = await asyncio.gather(
        *(one(client, p, args, d) for p, d in zip(prompts, delays, strict=True))
    )
    wall = time.perf_counter() - start
    await client.close()
    step_s = statistics.median(r["latency_s"] / max(1, r["steps"]) for r in res)
    return {
        "rate": rate,
        "requests": len(res),
        "wall_s": wall,
        "req_per_s": len(res) / wall,
        "tokens_per_s": sum(r["canvas_tokens"] for r in res) / wall,
        "goodput_req_per_s": sum(r["latency_s"] <= args.slo_s for r in res) / wall,
        "ttfu_p50_s": pct([r["ttfu_s"] for r in res], 0.5),
        "ttfu_p99_s": pct([r["ttfu_s"] for r in res], 0.99),
        "latency_p50_s": pct([r["latency_s"] for r in res], 0.5),
        "latency_p99_s": pct([r["latency_s"] for r in res], 0.99),
        "first_update_after_admit_p50_s": pct([r["ttfu_s"] - r["queued_s"] for r in res], 0.5),
        "median_time_per_step_s": step_s,
    }


def offline_tokens_per_s(args, prompts: list[str]) -> float:
    llm = LLM(args.model, device=args.device)
    params = SamplingParams(**sampling(args))
    sc = SparseConfig(**sparse(args)) if args.ratio is not None else None
    llm.generate(prompts[:2], params, sc, use_tqdm=False)  # warm-up
    start = time.perf_counter()
    outs = llm.generate(prompts, params, sc, use_tqdm=False)
    tps = sum(len(o["token_ids"]) for o in outs) / (time.perf_counter() - start)
    del llm
    return tps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="", help="checkpoint folder (default: the shipped demo)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--rates", type=float, nargs="+", default=[1.0, 4.0, float("inf")])
    ap.add_argument("--num-requests", type=int, default=32)
    ap.add_argument("--burstiness", type=float, default=1.0)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--block", type=int, default=16)
    ap.add_argument("--ratio", type=float, default=0.5, help="sparse retention (omit: 0.5)")
    ap.add_argument("--slo-s", type=float, default=30.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not args.model:
        from dllmserve.assets import default_model_path

        args.model = str(default_model_path())
    prompts = [f"Question {i}: what is {i} plus {2 * i}?" for i in range(args.num_requests)]
    print("offline engine ...", flush=True)
    offline = offline_tokens_per_s(args, prompts)
    port = free_port()
    target = f"127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "dllmserve.cli", "serve", "--model", args.model, "--listen",
           target, "--workers", str(args.workers)]  # fmt: skip
    if args.device:
        cmd += ["--device", args.device]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with Client(target) as c:
            deadline = time.time() + 300
            while True:
                try:
                    if len(c.server_info(timeout=2).workers) >= args.workers:
                        break
                except Exception:  # noqa: BLE001 - not up yet
                    pass
                if time.time() > deadline or server.poll() is not None:
                    raise SystemExit("the service did not come up")
                time.sleep(0.5)
        results = []
        for rate in args.rates:
            r = asyncio.run(run_rate(target, prompts, rate, args))
            results.append(r)
            print(json.dumps(r), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)
    sat = max(r["tokens_per_s"] for r in results)
    print(f"\noffline engine: {offline:.1f} tok/s; service at saturation: {sat:.1f} tok/s "
          f"({100 * sat / offline:.0f}%)")  # fmt: skip
    print(f"{'rate':>6} {'req/s':>7} {'tok/s':>8} {'goodput':>8} {'TTFU p50':>9} {'p99':>7} "
          f"{'lat p50':>8} {'p99':>7} {'1st-after-admit':>15} {'step':>7}")  # fmt: skip
    for r in results:
        print(
            f"{r['rate']:>6} {r['req_per_s']:>7.2f} {r['tokens_per_s']:>8.1f} "
            f"{r['goodput_req_per_s']:>8.2f} {r['ttfu_p50_s']:>9.3f} {r['ttfu_p99_s']:>7.3f} "
            f"{r['latency_p50_s']:>8.3f} {r['latency_p99_s']:>7.3f} "
            f"{r['first_update_after_admit_p50_s']:>15.3f} {r['median_time_per_step_s']:>7.3f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"offline_tokens_per_s": offline, "results": results,
                                         "args": {k: str(v) for k, v in vars(args).items()}},
                                        indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
