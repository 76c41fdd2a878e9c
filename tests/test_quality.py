"""The shipped tiny LLaDA still does, through `LLM.generate` on CPU, what its card records.

A regression test of the engine on trained weights: a wrong RoPE, norm, mask or sampler step
leaves random-weight tests green but breaks what a trained model learned. The recorded
figures (ci_eval.json beside the weights, written by `benchmarks/quality.py --record-ci` on
CPU in fp32 with the same settings) may be missed by `CI_TOLERANCE` and `CI_LOSS_TOLERANCE`:
two examples of the 24, for BLAS rounding that flips a near-tie, and 0.05 nats.
"""

from __future__ import annotations

import json

import pytest

from dllmserve import LLM
from dllmserve.assets import default_model_path, tasks
from dllmserve.evaluation import CI_LOSS_TOLERANCE, CI_TOLERANCE, ci_metrics


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(default_model_path(), device="cpu")


def test_shipped_checkpoint_is_small_and_loads(llm: LLM) -> None:
    path = default_model_path()
    assert (path / "MODEL_CARD.md").is_file()
    assert (path / "model.safetensors").stat().st_size <= 20 * 1024 * 1024
    cfg = llm.engine.model.cfg
    assert (cfg.arch, cfg.n_layers, cfg.d_model) == ("llada", 8, 256)
    rendered = llm.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert rendered == tasks.chat_prompt("hi")


def test_dense_quality_matches_the_card(llm: LLM) -> None:
    recorded = json.loads((default_model_path() / "ci_eval.json").read_text())
    got = ci_metrics(llm)
    for key in ("accuracy", "answer_format", "stopped"):
        assert got[key] >= recorded[key] - CI_TOLERANCE, (key, got, recorded)
    assert got["masked_loss"] <= recorded["masked_loss"] + CI_LOSS_TOLERANCE, (got, recorded)
