"""The offline API end to end on the built-in demo model (no download needed).

    python examples/offline.py [checkpoint-folder]

The demo model (a tiny LLaDA) looks codes up in lists, copies text and adds numbers: the lookup
runs with sparse attention, the addition densely (this small a model keeps exact arithmetic
only densely). With a real checkpoint folder (e.g. ./LLaDA-8B-Instruct) ask it anything.
"""

from __future__ import annotations

import sys

from dllmserve import LLM, SamplingParams
from dllmserve.assets import default_model_path, tasks
from dllmserve.sparse.state import SparseConfig


def main() -> None:
    llm = LLM(sys.argv[1] if len(sys.argv) > 1 else default_model_path())
    questions = [tasks.demo().question, "What is 123 + 456?"]
    prompts = [
        llm.tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
        )
        for q in questions
    ]
    params = SamplingParams(temperature=0.0, gen_length=32, steps=32, block_length=32)
    configs = [SparseConfig(retention_ratio=0.5), SparseConfig(enabled=False)]
    outputs = llm.generate(prompts, params, sparse_configs=configs, use_tqdm=False)
    for q, out in zip(questions, outputs, strict=True):
        print(
            f"Q: ...{q.splitlines()[-1]}\nA: {out['text']!r}  ({out['finish_reason']}, "
            f"{out['num_steps']} steps, {out['kv_cache_bytes']} cache bytes, "
            f"{out['latency']:.2f} s)"
        )


if __name__ == "__main__":
    main()
