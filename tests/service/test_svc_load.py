"""Load: 200 concurrent streaming requests from one client process, 2 CPU workers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from dllmserve.client import AsyncClient, Canvas, Completed, StepUpdate

N = 200
SP = {"gen_length": 16, "steps": 8, "seed": 11}
PROMPTS = [f"load prompt number {i}" for i in range(10)]


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _wave(target: str, tag: str) -> list:
    async with AsyncClient(target) as c:

        async def one(i: int):
            canvas, steps, done = Canvas(), 0, None
            async for ev in c.generate(
                PROMPTS[i % len(PROMPTS)], request_id=f"{tag}-{i}", sampling_params=SP,
                timeout=600,
            ):  # fmt: skip
                if isinstance(ev, StepUpdate):
                    canvas.apply(ev)
                    steps += 1
                elif isinstance(ev, Completed):
                    done = ev
            return i, canvas, steps, done

        return await asyncio.gather(*(one(i) for i in range(N)))


@pytest.mark.load
def test_200_concurrent_streams_on_two_cpu_workers(make_cluster):
    c = make_cluster()
    c.add_scheduler()
    ws = [c.add_worker("--max-num-seqs", "64", wait=False) for _ in range(2)]
    for w in ws:
        c.wait_worker(w)
    sched_pid = c.schedulers[0][0].pid
    rss = []
    by_prompt: dict[str, list[int]] = {}
    workers_used = set()
    for wave in ("a", "b"):
        results = asyncio.run(_wave(c.target, wave))
        assert len(results) == N
        for i, canvas, steps, done in results:
            assert done is not None, f"request {wave}-{i} did not complete"
            assert steps == done.usage.steps > 0
            assert canvas.token_ids(16) == list(done.token_ids)
            assert canvas.text == done.text
            by_prompt.setdefault(PROMPTS[i % len(PROMPTS)], []).append(tuple(done.token_ids))
            workers_used.add(done.worker_id)
        rss.append(_rss_kb(sched_pid))
    # Equal requests give equal results, whatever batch they ran in.
    for outs in by_prompt.values():
        assert len(set(outs)) == 1
    assert len(workers_used) == 2, "both workers took part"
    # The scheduler keeps no per-request state after a request ends: a second wave of 200
    # streams does not grow it by more than a few MB.
    assert rss[1] - rss[0] < 32 * 1024, rss
