"""The seed guide's examples (docs/sparse_attention_guide.md) run unchanged but for the path."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from dllmserve import LLM, SamplingParams, SparseConfig

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "sparse_attention_guide.md"


def guide_block(marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    return next(b for b in blocks if marker in b)


def run(code: str, path: Path, ns: dict) -> dict:
    exec(compile(code.replace("./LLaDA-8B-Instruct", str(path)), "guide", "exec"), ns)
    return ns


def test_complete_example(llada_dir, capsys, monkeypatch):
    """Its checkpoint is the script's first argument (the demo model without one)."""
    monkeypatch.setattr(sys, "argv", ["guide.py", str(llada_dir)])
    run(guide_block("def main()"), llada_dir, {"__name__": "__main__"})
    assert capsys.readouterr().out.count("\n") == 1  # one prompt, one printed answer


def test_basic_usage(llada_dir):
    ns = run(guide_block("# Use with generate()"), llada_dir, {"prompts": ["Hi", "Yo"]})
    assert len(ns["outputs"]) == 2 and len(ns["outputs"][0]["token_ids"]) == 64


def test_per_prompt_configs(llada_dir):
    ns = {
        "SparseConfig": SparseConfig,
        "llm": LLM(llada_dir),
        "prompts": ["one", "two", "three"],
        "params": SamplingParams(gen_length=16, steps=16),
    }
    run(guide_block("Different sparsity for different prompts"), llada_dir, ns)
    assert [len(o["token_ids"]) for o in ns["outputs"]] == [16, 16, 16]


def test_benchmarking_loop(llada_dir, capsys):
    run(guide_block("ratios = [1.0, 0.7, 0.5, 0.3]"), llada_dir, {})
    assert capsys.readouterr().out.count("req/s") == 4


@pytest.mark.parametrize("marker", ["def get_sparse_config", "layer_wise=True,  # Enable"])
def test_advanced_snippets(llada_dir, marker):
    ns = run(guide_block(marker), llada_dir, {"SparseConfig": SparseConfig})
    if "get_sparse_config" in ns:
        assert ns["get_sparse_config"](100).enabled is False
        assert ns["get_sparse_config"](1000).retention_ratio == 0.5
    else:
        assert ns["sparse_config"].ratios_for(4)[0] > 0.5
