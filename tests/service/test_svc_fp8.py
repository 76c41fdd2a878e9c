"""A worker started with --quantization fp8 serves finished, valid generations: the same tokens
as the offline engine with the same option (on the CPU both run the FP8 reference path)."""

from __future__ import annotations

from dllmserve import LLM, SamplingParams
from dllmserve.client import Client

SP = {"gen_length": 16, "steps": 8, "seed": 5, "temperature": 0.7}


def test_fp8_worker_completes_with_the_offline_tokens(make_cluster, tiny_model):
    c = make_cluster()
    c.add_scheduler()
    c.add_worker("--quantization", "fp8")
    with Client(c.target) as cl:
        done = cl.generate_text(token_ids=[5, 6, 7, 8], sampling_params=SP)
    llm = LLM(tiny_model, device="cpu", quantization="fp8")
    offline = llm.generate([[5, 6, 7, 8]], SamplingParams(**SP), use_tqdm=False)[0]
    assert list(done.token_ids) == offline["token_ids"]
    assert len(done.token_ids) == 16 and llm.engine.tokens.mask not in done.token_ids
