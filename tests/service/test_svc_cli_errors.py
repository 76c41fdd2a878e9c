"""Operator mistakes, through the real command line: each is one line on stderr naming what is
wrong and what to do, no traceback, and exit status 2; listening beyond this machine without a
token needs --insecure; the distributed commands never guess a Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from svc_util import wait_for

from dllmserve.cli import build_parser
from dllmserve.scheduler.local_redis import free_port

# Imported by sitecustomize in the child: the modules of the engine and service extras cannot be
# imported, as on the client-only install (`pip install dllmserve`).
BLOCKER = """\
import sys

BLOCKED = {blocked!r}


class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, _Blocked())
"""


def _cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    env.pop("DLLMSERVE_REDIS_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "dllmserve.cli", "--log-level", "WARNING", *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip


def _one_line(out: subprocess.CompletedProcess, command: str) -> str:
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith(f"dllmserve {command}: "), lines
    return lines[0]


@pytest.mark.parametrize("command", ["worker", "serve"])
def test_a_bad_model_is_one_line(command, rserver, tmp_path):
    where = ["--listen", "127.0.0.1:0"] if command == "serve" else ["--http-port", "0"]
    out = _cli(command, "--model", str(tmp_path / "nowhere"), "--device", "cpu",
               "--redis-url", rserver.url, *where)  # fmt: skip
    line = _one_line(out, command)
    assert f"--model {tmp_path / 'nowhere'}" in line and "config.json" in line


@pytest.mark.parametrize("command", ["worker", "serve"])
def test_a_redis_that_cannot_be_reached_is_one_line_before_anything_starts(command):
    url = f"redis://:pw@127.0.0.1:{free_port()}/0"  # nothing listens there
    where = ["--http-port", "0"] if command == "worker" else ["--listen", "127.0.0.1:0"]
    out = _cli(command, "--redis-url", url, "--device", "cpu", *where)
    line = _one_line(out, command)
    assert "cannot reach Redis at redis://***@127.0.0.1" in line and "pw" not in line


@pytest.mark.parametrize("command", ["scheduler", "worker"])
def test_the_distributed_commands_require_a_redis_url(command):
    line = _one_line(_cli(command), command)
    assert "--redis-url" in line and "DLLMSERVE_REDIS_URL" in line


@pytest.mark.parametrize(
    ("command", "extra"),
    [("serve", "engine,service"), ("scheduler", "service"), ("gateway", "service"),
     ("worker", "engine,service")],
)  # fmt: skip
def test_the_client_only_install_names_the_extra_to_install(command, extra, tmp_path):
    from dllmserve.cli.common import EXTRA_MODULES

    (tmp_path / "sitecustomize.py").write_text(BLOCKER.format(blocked=sorted(EXTRA_MODULES)))
    env = {"PYTHONPATH": str(tmp_path), "DLLMSERVE_REDIS_URL": "redis://127.0.0.1:1/0"}
    out = _cli(command, env=env)
    line = _one_line(out, command)
    assert f"install dllmserve[{extra}]" in line and "no module" in line


def test_listening_defaults_are_loopback():
    p = build_parser()
    assert p.parse_args(["scheduler"]).listen == "127.0.0.1:50051"
    assert p.parse_args(["gateway"]).listen == "127.0.0.1:8000"


@pytest.mark.parametrize("command", ["scheduler", "gateway"])
def test_listening_beyond_loopback_without_a_token_needs_insecure(command, rserver, tmp_path):
    port = free_port()
    args = [command, "--listen", f"0.0.0.0:{port}"]
    if command == "scheduler":
        args += ["--redis-url", rserver.url, "--metrics-port", "0"]
    line = _one_line(_cli(*args), command)
    assert f"--listen 0.0.0.0:{port}" in line and "--insecure" in line
    # said explicitly (or, for the scheduler, with a token) it starts
    marker = f"DLLMSERVE_{command.upper()}_READY"
    extras = [["--insecure"]] + ([["--auth-token", "s3cret"]] if command == "scheduler" else [])
    for extra in extras:
        assert _starts([*args, *extra], marker, tmp_path / f"{command}.log")


def _starts(args: list[str], marker: str, log: Path) -> bool:
    """Whether the command prints its ready marker (then it is stopped)."""
    with open(log, "w") as f:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        p = subprocess.Popen([sys.executable, "-m", "dllmserve.cli", *args],
                             stdout=f, stderr=subprocess.STDOUT, env=env)  # fmt: skip
    try:
        wait_for(lambda: marker in log.read_text() or p.poll() is not None, 60)
        assert marker in log.read_text(), log.read_text()
        return True
    finally:
        p.kill()  # only its start is checked
        p.wait(60)
