"""How far FP8 weights move the results from bf16, measured on the GPU's own kernels.

    python benchmarks/fp8_accuracy.py --json fp8_accuracy.json      # on a GPU

1. The shipped tiny LLaDA on its held-out tasks (copying, addition, lookups in 128 tokens):
   greedy generations in bf16 and with quantization="fp8"; the share of generated positions
   and of answers that agree, and each one's exact-match accuracy.
2. The LLaDA-8B shape (random weights, the same in both): one FULL forward over 384 random
   tokens in bf16 and in FP8; the logits' relative error ||fp8 - bf16|| / ||bf16|| on the 32
   decided rows, and how often their argmax agrees.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dllmserve import LLM, SamplingParams
from dllmserve.assets import default_model_path, tasks
from dllmserve.evaluation import OneSequenceAttention
from dllmserve.models.shapes import SHAPES, random_model


def tiny_agreement(n: int) -> dict:
    examples = tasks.held_out("copy", n) + tasks.held_out("add", n)
    examples += tasks.held_out("recall", n, 128)
    prompts = [tasks.chat_prompt(e.question) for e in examples]
    params = SamplingParams(gen_length=32, steps=32, block_length=32)
    outs = {}
    for name, options in (("bf16", {}), ("fp8", {"quantization": "fp8"})):
        llm = LLM(default_model_path(), dtype="bfloat16", **options)
        outs[name] = llm.generate(prompts, params, use_tqdm=False)
        del llm
    pairs = list(zip(outs["bf16"], outs["fp8"], strict=True))
    same = sum(
        a == b for o, f in pairs for a, b in zip(o["token_ids"], f["token_ids"], strict=True)
    )
    acc = {
        k: sum(tasks.is_correct(e, o["text"]) for e, o in zip(examples, v, strict=True)) / len(v)
        for k, v in outs.items()
    }
    return {
        "examples": len(examples),
        "positions_agree": same / sum(len(o["token_ids"]) for o, _ in pairs),
        "answers_agree": sum(o["text"] == f["text"] for o, f in pairs) / len(pairs),
        "accuracy_bf16": acc["bf16"],
        "accuracy_fp8": acc["fp8"],
    }


def logits_error(shape: str, tokens: int = 384, rows: int = 32) -> dict:
    cfg = SHAPES[shape]
    dev = torch.device("cuda")
    gen = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size - 1, (tokens,), generator=gen).to(dev)
    pos = torch.arange(tokens, device=dev)
    out = {}
    for name, quant in (("bf16", None), ("fp8", "fp8")):
        model = random_model(cfg, torch.bfloat16, dev, seed=0, quantization=quant)
        hidden = model.forward(ids, pos, OneSequenceAttention())
        out[name] = model.logits(hidden[-rows:]).float()
        del model
        torch.cuda.empty_cache()
    ref, got = out["bf16"], out["fp8"]
    return {
        "shape": shape,
        "rows": rows,
        "relative_error": ((got - ref).norm() / ref.norm()).item(),
        "argmax_agree": (got.argmax(-1) == ref.argmax(-1)).float().mean().item(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=16, help="held-out examples per task")
    ap.add_argument("--shapes", nargs="+", default=["llada-8b"])
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    doc = {"card": torch.cuda.get_device_name(), "tiny_llada": tiny_agreement(a.n)}
    print(json.dumps(doc["tiny_llada"]), flush=True)
    doc["logits"] = [logits_error(s) for s in a.shapes]
    for r in doc["logits"]:
        print(json.dumps(r), flush=True)
    if a.json:
        a.json.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
