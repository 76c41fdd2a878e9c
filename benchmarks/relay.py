"""Relay latency probe: how long a worker's step record takes to reach its gRPC client.

The whole service path runs for real — a private redis-server, a `dllmserve scheduler` process,
a worker process running the real `WorkerLoop` (inbox, START, the publisher thread,
PUBLISH_STEPS, FINISH), gRPC to an `AsyncClient` — except the engine: a fake one whose step
sleeps `--step-ms` (like a GPU step, it leaves the CPU free) and commits one token per request.
So the numbers are the service's own overhead, not that of a model competing for the CPU.

Per request, from the timestamps the worker writes into the request's hash:
  relay        = client receives the first step update - worker wrote it (t_first)
  admit->first = client receives the first step update - worker admitted it (t_start)
  enqueue      = scheduler enqueued it (t_enq) - client sent it
Requests arrive as a Poisson stream at each of `--rates` (req/s), then `--burst` at once.

    python benchmarks/relay.py                        # 10 ms steps, 128 steps per request
    python benchmarks/relay.py --rates 1 4 --num-requests 64 --burst 32 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dllmserve.testing.fake_engine import FakeEngine


def fake_worker(url: str, step_ms: float) -> None:
    from dllmserve.worker.config import WorkerConfig
    from dllmserve.worker.main import run

    cfg = WorkerConfig(redis_url=url, model_name="fake", heartbeat_interval_s=0.5)
    run(cfg, engine=FakeEngine(step_ms / 1000))


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux; NaN elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return float("nan")


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")


async def one(client, r, args, delay: float, tag: str) -> dict:
    from dllmserve.broker import redis_keys as rk
    from dllmserve.client import StepUpdate

    await asyncio.sleep(delay)
    rid = f"{tag}-{random.getrandbits(48):012x}"
    sent = time.time()
    first = None
    async for ev in client.generate(
        token_ids=[5, 6, 7],
        request_id=rid,
        sampling_params={"gen_length": args.steps, "steps": args.steps, "stop_at_eos": False},
    ):
        if isinstance(ev, StepUpdate) and first is None:
            first = time.time()
    h = await r.hmget(rk.req_key(rid), "t_enq", "t_start", "t_first")
    t_enq, t_start, t_first = (float(x) for x in h)
    return {
        "relay": first - t_first,
        "admit_to_first": first - t_start,
        "enqueue": t_enq - sent,
        "worker_first": t_first - t_start,
    }


def summary(res: list[dict], rate: float) -> dict:
    out: dict = {"rate": rate, "requests": len(res)}
    for k in ("relay", "admit_to_first", "enqueue", "worker_first"):
        xs = [x[k] for x in res]
        out[k] = {"p50_ms": 1000 * pct(xs, 0.5), "p99_ms": 1000 * pct(xs, 0.99),
                  "max_ms": 1000 * max(xs)}  # fmt: skip
    relay = [x["relay"] for x in res]
    out["relay_over_10ms"] = [  # (arrival index, ms) of the requests whose relay took long
        (i, round(1000 * v, 1)) for i, v in enumerate(relay) if v > 0.010
    ]
    return out


async def measure(target: str, url: str, args) -> list[dict]:
    import redis.asyncio as aioredis

    from dllmserve.client import AsyncClient

    results = []
    r = aioredis.Redis.from_url(url)
    async with AsyncClient(target) as client:
        # warm-up: a burst, so the phases find the connections (gRPC, Redis pools) already open
        await asyncio.gather(*(one(client, r, args, 0, "warm") for _ in range(args.burst)))
        for rate in [*args.rates, float("inf")]:
            n = args.num_requests if rate != float("inf") else args.burst
            rng = random.Random(0)
            t, delays = 0.0, []
            for _ in range(n):
                delays.append(t)
                if rate != float("inf"):
                    t += rng.expovariate(rate)
            res = await asyncio.gather(*(one(client, r, args, d, f"r{rate}") for d in delays))
            s = summary(res, rate)
            results.append(s)
            print(
                f"rate {rate:>5} n {n:>3}: relay p50 {s['relay']['p50_ms']:6.1f} "
                f"p99 {s['relay']['p99_ms']:6.1f} max {s['relay']['max_ms']:6.1f} ms | "
                f"admit->first p50 {s['admit_to_first']['p50_ms']:6.1f} "
                f"p99 {s['admit_to_first']['p99_ms']:6.1f} ms | enqueue p50 "
                f"{s['enqueue']['p50_ms']:5.1f} p99 {s['enqueue']['p99_ms']:5.1f} ms | "
                f"worker first p50 {s['worker_first']['p50_ms']:5.1f} ms\n"
                f"    relay > 10 ms (arrival index, ms): {s['relay_over_10ms']}",
                flush=True,
            )
            await asyncio.sleep(args.gap)
    await r.aclose()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--step-ms", type=float, default=10.0)
    ap.add_argument("--steps", type=int, default=128, help="steps per request")
    ap.add_argument("--rates", type=float, nargs="*", default=[1.0, 2.0, 4.0])
    ap.add_argument("--num-requests", type=int, default=48, help="requests per rate")
    ap.add_argument("--burst", type=int, default=32, help="then this many at once")
    ap.add_argument("--gap", type=float, default=0.0, help="seconds between phases")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--fake-worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.fake_worker:
        fake_worker(args.fake_worker, args.step_ms)
        return
    from dllmserve.client import Client
    from dllmserve.scheduler.local_redis import LocalRedis, free_port

    tmp = Path(tempfile.mkdtemp(prefix="dllmserve-relay-"))
    red = LocalRedis(tmp / "redis", aof=False).start()
    port = free_port()
    procs = []
    try:
        cmds = {
            "scheduler": [sys.executable, "-m", "dllmserve.cli", "scheduler", "--redis-url",
                          red.url, "--listen", f"127.0.0.1:{port}"],
            "worker": [sys.executable, __file__, "--fake-worker", red.url, "--step-ms",
                       str(args.step_ms)],
        }  # fmt: skip
        for name, cmd in cmds.items():
            with open(tmp / f"{name}.log", "wb") as log:
                procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
        target = f"127.0.0.1:{port}"
        with Client(target) as c:
            for _ in range(600):
                try:
                    if any(w.state == "ready" for w in c.server_info(timeout=2).workers):
                        break
                except Exception:  # noqa: BLE001 - not up yet
                    pass
                time.sleep(0.1)
            else:
                raise SystemExit(f"the service did not come up; logs in {tmp}")
        cpu0 = cpu_s(procs[0].pid)
        results = asyncio.run(measure(target, red.url, args))
        n = args.burst + sum(r["requests"] for r in results)  # the warm-up burst too
        sched_ms = 1000 * (cpu_s(procs[0].pid) - cpu0) / n
        print(f"scheduler CPU per request (warm-up included): {sched_ms:.2f} ms")
        if args.json:
            args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)},
                                             "results": results,
                                             "scheduler_cpu_ms_per_request": sched_ms},
                                            indent=1))  # fmt: skip
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        red.stop()


if __name__ == "__main__":
    main()
