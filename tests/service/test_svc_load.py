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


async def _http_wave(base: str, want: dict[str, str]) -> int:
    import openai

    oai = openai.AsyncOpenAI(base_url=base + "/v1", api_key="x", max_retries=0, timeout=600)

    async def one(i: int) -> None:
        prompt = PROMPTS[i % len(PROMPTS)]
        text, finish = "", None
        stream = await oai.completions.create(
            model="", prompt=prompt, max_tokens=SP["gen_length"], stream=True,
            extra_body={"steps": SP["steps"], "seed": SP["seed"]},
        )  # fmt: skip
        async for chunk in stream:
            text += chunk.choices[0].text
            finish = chunk.choices[0].finish_reason or finish
        assert finish in ("stop", "length"), i
        assert text == want[prompt], i

    await asyncio.gather(*(one(i) for i in range(N)))
    await oai.close()
    return N


@pytest.mark.load
def test_200_concurrent_http_streams(make_cluster):
    """The same load through the HTTP gateway: every SSE stream completes with the text the
    gRPC API gives for its prompt."""
    from http_util import add_gateway

    from dllmserve.client import Client

    c = make_cluster()
    c.add_scheduler()
    ws = [c.add_worker("--max-num-seqs", "64", wait=False) for _ in range(2)]
    for w in ws:
        c.wait_worker(w)
    base = add_gateway(c)
    with Client(c.target) as cl:
        want = {p: cl.generate_text(p, sampling_params=SP).text for p in PROMPTS}
    assert asyncio.run(_http_wave(base, want)) == N
