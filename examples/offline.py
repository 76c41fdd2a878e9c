"""The offline API end to end on a tiny random LLaDA checkpoint (no download needed).

    python examples/offline.py [checkpoint-folder]

With a real checkpoint folder (e.g. ./LLaDA-8B-Instruct) it prints real answers; on the tiny
random model the text is noise, but every mechanism (chat template, sparse configs per prompt,
batching, metrics) is the one a real model goes through.
"""

from __future__ import annotations

import sys
import tempfile

from dllmserve import LLM, SamplingParams
from dllmserve.sparse.state import SparseConfig
from dllmserve.testing.tiny_models import write_tiny_checkpoint


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else str(write_tiny_checkpoint(tempfile.mkdtemp()))
    llm = LLM(path)
    questions = ["What is a diffusion language model?", "Name three prime numbers."]
    prompts = [
        llm.tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
        )
        for q in questions
    ]
    params = SamplingParams(temperature=0.0, gen_length=64, steps=64, block_length=32)
    configs = [SparseConfig(retention_ratio=0.5), SparseConfig(enabled=False)]
    for q, out in zip(
        questions, llm.generate(prompts, params, sparse_configs=configs), strict=True
    ):
        print(
            f"Q: {q}\nA: {out['text']!r}  ({out['finish_reason']}, {out['num_steps']} steps, "
            f"{out['kv_cache_bytes']} cache bytes, {out['latency']:.2f} s)"
        )


if __name__ == "__main__":
    main()
