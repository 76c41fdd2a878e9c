"""The shipped tiny LLaDA through the whole service: the same tokens as `LLM.generate`, so the
card's recorded quality holds over gRPC too (issue 6's CI check through the service)."""

from __future__ import annotations

import asyncio
import dataclasses
import json

from svc_util import Cluster

from dllmserve import LLM
from dllmserve.assets import default_model_path, tasks
from dllmserve.client import AsyncClient
from dllmserve.evaluation import CI_PARAMS, CI_TOLERANCE, answer_format_ok, ci_examples


def test_service_matches_offline_on_the_shipped_model(tmp_path):
    examples = ci_examples()
    prompts = [tasks.chat_prompt(e.question) for e in examples]
    offline = LLM(default_model_path(), device="cpu").generate(prompts, CI_PARAMS, use_tqdm=False)

    c = Cluster(tmp_path, default_model_path())
    try:
        c.add_scheduler()
        c.add_worker()

        async def run_all():
            client = AsyncClient(c.target)
            params = {k: v for k, v in dataclasses.asdict(CI_PARAMS).items() if v is not None}
            done = await asyncio.gather(
                *(client.generate_text(p, sampling_params=params) for p in prompts)
            )
            await client.close()
            return done

        served = asyncio.run(run_all())
    finally:
        c.close()

    for off, srv in zip(offline, served, strict=True):
        assert list(srv.token_ids) == off["token_ids"]
        assert srv.text == off["text"]
    recorded = json.loads((default_model_path() / "ci_eval.json").read_text())
    n = len(examples)
    pairs = list(zip(examples, served, strict=True))
    got = {
        "accuracy": sum(tasks.is_correct(e, s.text) for e, s in pairs) / n,
        "answer_format": sum(answer_format_ok(e, s.text) for e, s in pairs) / n,
    }
    for key, value in got.items():
        assert value >= recorded[key] - CI_TOLERANCE, (key, got, recorded)
