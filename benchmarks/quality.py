"""Quality of sparse attention on the shipped tiny LLaDA: accuracy, agreement, masked loss.

    python benchmarks/quality.py --json q.json --markdown q.md           # GPU: the full grid
    python benchmarks/quality.py --quick                                 # CPU: a small grid
    python benchmarks/quality.py --dense-only --n 32                     # dense accuracy only

For every held-out task (key-value recall at each context length, copy, addition) it runs
dense generation and every sparse config of the grid (retention 1.0/0.7/0.5/0.3 x delay
0/1/5 x head_select on/off x layer_wise on/off) through `LLM.generate`, greedy (temperature 0),
block length 32 for dense and sparse alike so that only the K/V retention differs, steps =
gen_length.
Reported per cell: exact-match accuracy, token agreement with the dense canvas over the
dense answer (its tokens and the stop token that ends it), and the K/V cache each request
reserved (dense keeps none: it recomputes every position each step). The dense masked-token loss
(cross-entropy per masked answer token, mask ratios 0.1..0.9) is the perplexity-style figure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import provenance
import torch

from dllmserve import LLM, SamplingParams
from dllmserve.assets import default_model_path, tasks
from dllmserve.evaluation import answer_format_ok, ci_metrics, masked_loss
from dllmserve.sparse.state import SparseConfig

RATIOS = (1.0, 0.7, 0.5, 0.3)
DELAYS = (0, 1, 5)
BLOCK = 32
GEN = {"recall": 32, "copy": 64, "add": 32}


def params_for(task: str) -> SamplingParams:
    g = GEN[task]
    return SamplingParams(temperature=0.0, gen_length=g, steps=g, block_length=BLOCK)


def grid(
    ratios=RATIOS, delays=DELAYS, head_select=(True, False), layer_wise=(False, True)
) -> list[SparseConfig | None]:
    """Dense (None) first, then every sparse combination."""
    sparse = [
        SparseConfig(
            retention_ratio=r, delay_step=d, head_select=h, layer_wise=lw, default_block_len=BLOCK
        )
        for r, d, h, lw in itertools.product(ratios, delays, head_select, layer_wise)
    ]
    return [None, *sparse]


def label(cfg: SparseConfig | None) -> str:
    if cfg is None:
        return "dense"
    on = {True: "on", False: "off"}
    return (
        f"r={cfg.retention_ratio} d={cfg.delay_step} hs={on[cfg.head_select]}"
        f" lw={on[cfg.layer_wise]}"
    )


def cells(task: str, context: int) -> str:
    return f"recall@{context}" if task == "recall" else task


def run_cell(
    llm: LLM, examples: list[tasks.Example], configs: list[SparseConfig | None]
) -> list[dict]:
    """One generate call for all configs x examples; per config: accuracy and agreement."""
    prompts = [tasks.chat_prompt(ex.question) for ex in examples]
    sp = params_for(examples[0].task)
    n = len(examples)
    outs = llm.generate(
        prompts * len(configs), sp, sparse_configs=[c for c in configs for _ in range(n)],
        use_tqdm=False,
    )  # fmt: skip
    stops = llm.engine.tokens.stop
    dense = outs[:n]
    rows = []
    for i, cfg in enumerate(configs):
        got = outs[i * n : (i + 1) * n]
        correct = sum(tasks.is_correct(ex, o["text"]) for ex, o in zip(examples, got, strict=True))
        agree = []
        for d, o in zip(dense, got, strict=True):
            end = next((j for j, t in enumerate(d["token_ids"]) if t in stops), sp.gen_length - 1)
            span = range(end + 1)
            agree.append(sum(d["token_ids"][j] == o["token_ids"][j] for j in span) / len(span))
        shaped = sum(answer_format_ok(ex, o["text"]) for ex, o in zip(examples, got, strict=True))
        kv_bytes = sum(o["kv_cache_bytes"] for o in got) / n
        rows.append(
            {
                "config": label(cfg),
                "accuracy": correct / n,
                "agreement": sum(agree) / n,
                "answer_format": shaped / n,
                "kv_cache_bytes": kv_bytes,
                "n": n,
            }
        )
    return rows


def evaluate(
    llm: LLM,
    n: int,
    contexts: tuple[int, ...],
    configs: list[SparseConfig | None],
    log: Callable[[str], None] = print,
    save: Callable[[dict], None] | None = None,
) -> dict:
    """Every (task, context) cell for every config, plus the dense masked loss per cell.

    Short tasks run first and `save` gets the results after every cell, so a run cut short
    by a time limit still leaves what it measured.
    """
    results: dict[str, dict] = {}
    jobs = [("copy", 0), ("add", 0)] + [("recall", c) for c in contexts]
    for task, ctx in jobs:
        examples = tasks.held_out(task, n, ctx)
        t0 = time.monotonic()
        rows = run_cell(llm, examples, configs)
        loss = masked_loss(llm, examples[: min(n, 16)])
        name = cells(task, ctx)
        results[name] = {"rows": rows, "masked_loss": loss}
        log(
            f"{name}: dense acc {rows[0]['accuracy']:.3f}, loss {loss:.3f} "
            f"({time.monotonic() - t0:.0f}s)"
        )
        if save is not None:
            save(results)
    return results


def markdown(results: dict, meta: dict) -> str:
    """The RESULTS.md table: one row per config, accuracy (agreement) per cell, and the K/V
    cache a request of the last (longest) cell reserved."""
    names = list(results)
    last = names[-1]
    head = (
        "| config | " + " | ".join(names) + f" | K/V per request, {last} (KiB) |\n"
        "|---|" + "---|" * (len(names) + 1) + "\n"
    )
    body = ""
    for i, row in enumerate(results[names[0]]["rows"]):
        vals = []
        for nm in names:
            r = results[nm]["rows"][i]
            vals.append(
                f"{r['accuracy']:.2f}" if i == 0 else f"{r['accuracy']:.2f} ({r['agreement']:.2f})"
            )
        kib = results[last]["rows"][i].get("kv_cache_bytes", 0) / 1024
        body += f"| {row['config']} | " + " | ".join(vals) + f" | {kib:.0f} |\n"
    loss = " | ".join(f"{results[nm]['masked_loss']:.3f}" for nm in names)
    body += f"| dense masked-token loss (nats) | {loss} | |\n"
    lines = [f"- {k}: {v}" for k, v in meta.items()]
    return "\n".join(lines) + "\n\n" + head + body


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(default_model_path()))
    ap.add_argument("--device", default=None)
    ap.add_argument("--n", type=int, default=64, help="examples per cell")
    ap.add_argument("--contexts", default=",".join(map(str, tasks.CONTEXTS)))
    ap.add_argument("--quick", action="store_true", help="CPU: n=8, contexts 128/512, delay 1")
    ap.add_argument("--dense-only", action="store_true", help="dense accuracy only (a check)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--markdown", type=Path, default=None)
    ap.add_argument("--record-ci", action="store_true", help="write the model's ci_eval.json")
    a = ap.parse_args()
    if a.record_ci:
        figures = ci_metrics(LLM(a.model, device="cpu"))
        (Path(a.model) / "ci_eval.json").write_text(json.dumps(figures, indent=1) + "\n")
        print(figures)
        return
    contexts = tuple(int(c) for c in a.contexts.split(","))
    configs = grid()
    if a.quick:
        a.n, contexts, configs = 8, (128, 512), grid(delays=(1,))
    if a.dense_only:
        configs = [None]
    llm = LLM(a.model, device=a.device)
    dev = llm.engine.device
    t0 = time.monotonic()

    def save(results: dict) -> None:
        if a.json:
            a.json.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")

    meta = {
        "model": Path(a.model).name,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git commit": provenance.commit(),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "command": "python " + " ".join(sys.argv),
        "examples per cell": a.n,
        "sampling": f"greedy, block {BLOCK}, steps = gen_length ({GEN})",
    }
    results = evaluate(llm, a.n, contexts, configs, lambda s: print(s, flush=True), save)
    meta["seconds"] = round(time.monotonic() - t0)
    save(results)
    md = markdown(results, meta)
    print(md)
    if a.markdown:
        a.markdown.write_text(md)


if __name__ == "__main__":
    main()
