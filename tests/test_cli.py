"""The command line explains itself: every flag of every subcommand has help naming its default
and environment variable, the variable sets the default (a bad value is an error naming it),
`--version` is the package's; the live view's colouring."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from importlib import metadata

import pytest

import dllmserve
from dllmserve.cli import build_parser
from dllmserve.cli.live import MASK, MASKED, NEW, canvas_text, position_strip


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


@pytest.mark.parametrize("command", [[], *[[c] for c in ("serve", "scheduler", "worker",
                                                         "generate")]])  # fmt: skip
def test_help_lists_every_flag_with_its_help_default_and_variable(command):
    out = subprocess.run([sys.executable, "-m", "dllmserve.cli", *command, "--help"],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "COLUMNS": "10000"})  # fmt: skip
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    parser = _subcommands()[command[0]] if command else build_parser()
    assert parser.description and parser.description.split()[0] in text
    assert "examples:" in text
    for action in _flags(parser):
        if action.dest == "version":
            continue
        assert action.help and action.option_strings[-1] in text, action.dest
        help_text = " ".join(action.help.split())
        assert f"{help_text} (default: " in text, action.dest
        assert f"env {action.env})" in text, action.dest


def test_every_subcommand_has_a_description():
    for name, parser in _subcommands().items():
        assert len(parser.description or "") > 80, name


def test_version_is_the_packages():
    out = subprocess.run([sys.executable, "-m", "dllmserve.cli", "--version"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.stdout.strip() == f"dllmserve {dllmserve.__version__}"
    assert dllmserve.__version__ == metadata.version("dllmserve")


def test_environment_sets_defaults_and_flags_win(monkeypatch):
    monkeypatch.setenv("DLLMSERVE_MAX_QUEUE", "7")
    monkeypatch.setenv("DLLMSERVE_NO_DISPATCH", "yes")
    monkeypatch.setenv("DLLMSERVE_AUTH_TOKEN", "t0k")  # generate's --token names this one
    a = build_parser().parse_args(["scheduler"])
    assert (a.max_queue, a.no_dispatch, a.auth_token) == (7, True, "t0k")
    assert build_parser().parse_args(["scheduler", "--max-queue", "9"]).max_queue == 9
    assert build_parser().parse_args(["generate", "hi"]).token == "t0k"
    monkeypatch.setenv("DLLMSERVE_LOG_LEVEL", "debug")
    assert build_parser().parse_args(["generate", "hi"]).log_level == "DEBUG"


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("DLLMSERVE_MAX_QUEUE", "lots", r"\$DLLMSERVE_MAX_QUEUE='lots': not a valid int"),
        ("DLLMSERVE_MAX_BATCH", "0", r"--max-batch / DLLMSERVE_MAX_BATCH: must be in \[1, inf\]"),
        ("DLLMSERVE_NO_DISPATCH", "maybe", r"\$DLLMSERVE_NO_DISPATCH='maybe': must be one of"),
        ("DLLMSERVE_LOG_LEVEL", "loud", r"\$DLLMSERVE_LOG_LEVEL='loud': --log-level is one of"),
    ],
)
def test_a_bad_variable_is_an_error_naming_it(monkeypatch, capsys, var, value, message):
    monkeypatch.setenv(var, value)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["scheduler"])
    assert re.search(message, capsys.readouterr().err)


def test_an_unrelated_subcommand_ignores_a_bad_variable(monkeypatch):
    monkeypatch.setenv("DLLMSERVE_MAX_QUEUE", "lots")  # a scheduler flag
    assert build_parser().parse_args(["generate", "hi"]).prompt == "hi"


def test_canvas_colours_this_steps_text_earlier_text_and_masks():
    text = canvas_text(f"He{MASK * 3} w{MASK * 4}", f"Hello w{MASK * 4}")
    spans = [(text.plain[s.start : s.end], str(s.style)) for s in text.spans]
    assert spans[0] == ("He", "default") and ("llo", NEW) in spans
    assert (MASK * 4, MASKED) in spans
    strip = position_strip(5, earlier={0}, now={3})
    assert strip.plain == f"█{MASK * 2}█{MASK}"
    assert [str(s.style) for s in strip.spans] == ["default", MASKED, MASKED, NEW, MASKED]


def test_serve_gives_each_cpu_worker_its_share_of_the_cores(monkeypatch):
    from dllmserve.cli.serve import cpu_threads_each
    from dllmserve.engine.config import EngineConfig, usable_cores

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("dllmserve.cli.serve.usable_cores", lambda: 9)
    assert cpu_threads_each(EngineConfig(), 1) == 8  # one core left to the other processes
    assert cpu_threads_each(EngineConfig(), 3) == 2
    assert cpu_threads_each(EngineConfig(), 16) == 1  # at least one
    assert cpu_threads_each(EngineConfig(cpu_threads=4), 2) is None  # the operator's choice
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert cpu_threads_each(EngineConfig(), 2) is None  # ... or the environment's
    assert usable_cores() >= 1


def test_the_service_flags_are_generated_from_their_configs():
    """Every settable field of SchedulerConfig and WorkerConfig is a flag with its variable and
    the field's own default; a flag sets the field (no hand-copied list to drift)."""
    from dataclasses import fields

    from dllmserve.config_fields import default_of
    from dllmserve.scheduler.config import SchedulerConfig
    from dllmserve.worker.config import WorkerConfig

    for cmd, cls in (("scheduler", SchedulerConfig), ("worker", WorkerConfig)):
        sub = build_parser()._subparsers._group_actions[0].choices[cmd]
        by_dest = {a.dest: a for a in sub._actions}
        for f in fields(cls):
            if not f.metadata.get("cli", True):
                continue
            flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
            (action,) = [a for a in sub._actions if flag in a.option_strings]
            assert action.env.startswith("DLLMSERVE_"), flag
            if action.dest == f.name:
                assert action.default == default_of(f), flag
            else:  # a flag that turns a default-on field off
                assert default_of(f) is True and by_dest[action.dest].default is False, flag
    from dllmserve.cli.scheduler import scheduler_config

    argv = ["--result-ttl", "60", "--no-dispatch", "--worker-wait", "2.5"]
    a = build_parser().parse_args(["scheduler", *argv, "--redis-url", "redis://r/0"])

    cfg = scheduler_config(a)
    assert (cfg.result_ttl_s, cfg.dispatch, cfg.worker_wait_s) == (60, False, 2.5)
    assert cfg.redis_url == "redis://r/0" and cfg.max_batch == SchedulerConfig().max_batch
