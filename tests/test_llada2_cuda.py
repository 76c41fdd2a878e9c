"""On a GPU: LLaDA2 through the engine gives the official tokens with Triton kernels (the fused
MoE, the REUSE attention of the block K/V cache) and with the CUDA graphs of its denoising steps,
on a tiny fp32 checkpoint so rounding cannot hide a wrong kernel. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from dllmserve import LLM, SamplingParams
from dllmserve.testing.tiny_llada2 import write_tiny_llada2
from tests.plain_llada2 import PlainLlada2, generate

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PROMPTS = [[45, 46, 47, 88, 99, 60, 70, 80, 5, 6, 7], [5, 6, 7, 8, 9, 60, 70, 80]]
KW = dict(gen_length=16, block_length=8, steps_per_block=4, threshold=0.9)


def test_graphs_and_eager_give_the_official_tokens(tmp_path):
    path = write_tiny_llada2(tmp_path / "l2", seed=2, logit_scale=12.0)
    ref = PlainLlada2(path)
    want = []
    for p in PROMPTS:
        ans = generate(ref, p, gen_length=16, block_length=8, steps=4, threshold=0.9)
        want.append(ans + [ref.eos_id] * (16 - len(ans)))
    for eager in (True, False):
        llm = LLM(path, device="cuda", dtype=torch.float32, num_cache_pages=512, page_size=8,
                  enforce_eager=eager)  # fmt: skip
        outs = llm.generate(PROMPTS, SamplingParams(**KW), use_tqdm=False)
        assert [o["token_ids"] for o in outs] == want
        if not eager:
            assert llm.engine.runner.graph_captures() > 0
