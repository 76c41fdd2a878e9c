"""One EngineConfig: its ranges, the options of LLM / Engine, the worker's and serve's flags and
DLLMSERVE_* variables generated from its fields, and the engine surface the worker drives."""

from __future__ import annotations

import argparse
import inspect
from dataclasses import fields

import pytest
import torch

from dllmserve import LLM, ValidationError
from dllmserve.cli import build_parser
from dllmserve.cli.config_args import add_config_args, config_from_args, config_to_args
from dllmserve.cli.options import Parser
from dllmserve.cli.worker import add_worker_args, worker_config
from dllmserve.engine.config import EngineConfig
from dllmserve.engine.engine import Engine
from dllmserve.engine.protocol import StepEngine
from dllmserve.testing.fake_engine import FakeEngine


@pytest.mark.parametrize(
    "kw,field,text",
    [
        (dict(max_num_seqs=0), "max_num_seqs", "integer >= 1"),
        (dict(max_num_batched_tokens=0), "max_num_batched_tokens", ">= 1 or None"),
        (dict(page_size=2.5), "page_size", "integer >= 1"),
        (dict(num_cache_pages=-1), "num_cache_pages", ">= 1 or None"),
        (dict(gpu_memory_utilization=1.5), "gpu_memory_utilization", "(0, 1]"),
        (dict(gpu_memory_utilization=0.0), "gpu_memory_utilization", "(0, 1]"),
        (dict(enforce_eager="yes"), "enforce_eager", "bool"),
        (dict(seed=-1), "seed", ">= 0"),
        (dict(tensor_parallel_size=2), "tensor_parallel_size", "only 1"),
        (dict(device="tpu"), "device", "cpu, cuda or cuda:N"),
        (dict(dtype="int8"), "dtype", "bfloat16"),
        (dict(cpu_threads=0), "cpu_threads", "integer >= 1 or None"),
        (dict(cpu_threads=1.5), "cpu_threads", "integer >= 1 or None"),
    ],
)
def test_bad_engine_options_name_the_field_and_range(kw, field, text):
    with pytest.raises(ValidationError) as e:
        EngineConfig(**kw)
    assert e.value.field == field and text in str(e.value)


def test_torch_values_become_names_and_aliases_resolve():
    cfg = EngineConfig(device=torch.device("cpu"), dtype=torch.float32)
    assert (cfg.device, cfg.dtype) == ("cpu", "float32")
    assert EngineConfig(dtype="bf16").dtype == "bfloat16"
    assert EngineConfig().batched_tokens("cuda") == 32768
    assert EngineConfig().batched_tokens("cpu") == 8192
    assert EngineConfig(max_num_batched_tokens=99).batched_tokens("cuda") == 99


def test_unknown_options_are_refused_by_name_before_loading():
    with pytest.raises(ValidationError) as e:
        LLM("no-such-checkpoint", max_num_seq=8, pagesize=4)
    assert e.value.field == "max_num_seq, pagesize" and "max_num_seqs" in str(e.value)
    with pytest.raises(ValidationError, match="unknown engine option"):
        Engine.from_random_shape("tiny", bogus=1)


def test_the_engine_runs_with_the_options_it_was_given(llada_dir):
    llm = LLM(llada_dir, max_num_seqs=3, page_size=8, num_cache_pages=40, enforce_eager=True)
    cfg = llm.engine.config
    assert (cfg.max_num_seqs, cfg.page_size, cfg.num_cache_pages) == (3, 8, 40)
    st = llm.engine.stats()
    assert (st["max_num_seqs"], st["page_size"], st["total_pages"]) == (3, 8, 40)
    assert st["max_num_batched_tokens"] == 8192  # the CPU default


def _worker(argv: list[str]):
    return worker_config(build_parser().parse_args(["worker", "--redis-url", "redis://r/0", *argv]))


def test_every_engine_option_is_a_worker_flag():
    argv = ["--page-size", "8", "--enforce-eager", "--max-num-seqs", "5", "--dtype", "fp32",
            "--num-cache-pages", "none", "--gpu-memory-utilization", "0.5"]  # fmt: skip
    cfg = _worker(argv).engine
    assert cfg == EngineConfig(page_size=8, enforce_eager=True, max_num_seqs=5, dtype="float32",
                               gpu_memory_utilization=0.5)  # fmt: skip
    assert _worker([]).engine == EngineConfig()  # the defaults are the dataclass's own
    p = Parser()
    add_worker_args(p)
    help_text = p.format_help()
    for f in fields(EngineConfig):
        flag = "--" + f.name.replace("_", "-")
        assert flag in help_text and f"DLLMSERVE_{f.name.upper()}" in help_text, flag


def test_environment_variables_set_the_defaults_and_flags_win(monkeypatch):
    monkeypatch.setenv("DLLMSERVE_PAGE_SIZE", "32")
    monkeypatch.setenv("DLLMSERVE_ENFORCE_EAGER", "true")
    monkeypatch.setenv("DLLMSERVE_MAX_NUM_BATCHED_TOKENS", "4096")
    cfg = _worker([]).engine
    assert (cfg.page_size, cfg.enforce_eager, cfg.max_num_batched_tokens) == (32, True, 4096)
    cfg = _worker(["--page-size", "4", "--no-enforce-eager"]).engine
    assert (cfg.page_size, cfg.enforce_eager) == (4, False)


def test_a_bad_flag_or_variable_is_an_error_naming_it(monkeypatch, capsys):
    with pytest.raises(SystemExit):
        _worker(["--max-num-seqs", "many"])
    assert "--max-num-seqs / DLLMSERVE_MAX_NUM_SEQS: expected int, got 'many'" in (
        capsys.readouterr().err
    )
    with pytest.raises(ValidationError, match="max_num_seqs"):
        _worker(["--max-num-seqs", "0"])  # a well-formed value out of range: the dataclass's
    monkeypatch.setenv("DLLMSERVE_GPU_MEMORY_UTILIZATION", "most")
    with pytest.raises(SystemExit):
        _worker([])
    assert "DLLMSERVE_GPU_MEMORY_UTILIZATION: expected float" in capsys.readouterr().err


def test_the_commands_refuse_an_out_of_range_option(capsys):
    from dllmserve.cli import main

    assert main(["worker", "--max-num-seqs", "0"]) == 2
    assert "dllmserve worker: max_num_seqs: must be an integer >= 1" in capsys.readouterr().err
    assert main(["serve", "--page-size", "0"]) == 2  # before it starts anything
    assert "dllmserve serve: page_size: must be an integer >= 1" in capsys.readouterr().err


def test_serve_passes_the_options_that_differ_to_its_workers():
    p = argparse.ArgumentParser()
    add_config_args(p, EngineConfig)
    cfg = config_from_args(EngineConfig, p.parse_args(["--page-size", "8", "--enforce-eager"]))
    args = config_to_args(cfg, skip=("device",))
    assert args == ["--page-size", "8", "--enforce-eager"]
    assert config_from_args(EngineConfig, p.parse_args(args)) == cfg
    nothing = config_to_args(EngineConfig(num_cache_pages=None, device="cpu"), skip=("device",))
    assert nothing == []
    serve = build_parser().parse_args(["serve", "--page-size", "8", "--max-num-seqs", "4"])
    assert config_from_args(EngineConfig, serve) == EngineConfig(page_size=8, max_num_seqs=4)


def test_engine_and_fake_engine_implement_the_worker_surface():
    """Every member of StepEngine exists on both, methods with the protocol's parameters, and
    the figures the heartbeat advertises are in both stats."""
    members = {n: v for n, v in vars(StepEngine).items() if not n.startswith("_")}
    engine = Engine.from_random_shape("tiny", device="cpu", num_cache_pages=64)
    for eng in (engine, FakeEngine()):
        for name in [*StepEngine.__annotations__, *members]:
            assert hasattr(eng, name), (eng, name)
        for name, member in members.items():
            if inspect.isfunction(member):
                want = list(inspect.signature(member).parameters)[1:]  # without self
                assert list(inspect.signature(getattr(eng, name)).parameters) == want, name
        keys = {"running", "waiting", "free_pages", "total_pages", "max_num_seqs"}
        assert keys <= set(eng.stats()) and isinstance(eng.max_num_seqs, int)
        assert isinstance(eng.model_name, str) and str(eng.device) == "cpu"


def test_an_engine_without_tokenizer_takes_token_ids_only():
    from dllmserve import SamplingParams
    from dllmserve.models.shapes import SHAPES, random_model

    model = random_model(SHAPES["tiny"], torch.float32, torch.device("cpu"))
    engine = Engine(model, None, EngineConfig(num_cache_pages=8))
    p = SamplingParams(gen_length=4, steps=4)
    with pytest.raises(ValidationError, match="must be token ids"):
        engine.add_request("t", "some text", p)
    engine.add_request("i", [5, 6, 7], p)
    while engine.has_unfinished():
        (u,) = engine.step()
    assert u.finished and u.text_delta == "" and u.output.text == "" and engine.decode([5]) == ""


def test_cpu_threads_default_to_the_usable_cores_unless_pinned(monkeypatch):
    import os

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert EngineConfig().threads() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the operator's (or the tests') pin
    assert EngineConfig().threads() == 3
    assert EngineConfig(cpu_threads=5).threads() == 5  # the option wins
    assert build_parser().parse_args(["worker", "--cpu-threads", "2"]).cpu_threads == 2


def test_an_engine_on_the_cpu_takes_its_threads():
    before = torch.get_num_threads()
    try:
        Engine.from_random_shape("tiny", device="cpu", cpu_threads=2, num_cache_pages=8)
        assert torch.get_num_threads() == 2
        Engine.from_random_shape("tiny", device="cpu", cpu_threads=1, num_cache_pages=8)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
