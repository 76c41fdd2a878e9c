"""`pip install dllmserve`, the base install with no extras, is a working client: in a fresh venv
with no torch it imports dllmserve.client and streams a generation from a running service."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IGNORE = (".git", ".venv", "build", "*.egg-info", "tests", "benchmarks", "__pycache__")

CLIENT_SCRIPT = textwrap.dedent(
    """
    import importlib.util, sys

    import dllmserve
    from dllmserve.client import Client, Completed, FinishReason, StepUpdate

    assert importlib.util.find_spec("torch") is None, "the base install pulled torch"
    try:
        from dllmserve import LLM  # noqa: F401
    except ImportError as e:
        assert "dllmserve[engine]" in str(e), e
    else:
        raise AssertionError("LLM imported without the engine extra")
    steps = 0
    with Client(sys.argv[1]) as c:
        for ev in c.generate("Hi", sampling_params={"gen_length": 16, "steps": 8}):
            steps += isinstance(ev, StepUpdate)
            if isinstance(ev, Completed):
                done = ev
    assert steps == 8 and done.usage.steps == 8, (steps, done)
    assert isinstance(done.finish_reason, FinishReason)
    print("STREAMED", dllmserve.__version__, done.finish_reason.name, len(done.token_ids))
    assert "torch" not in sys.modules
    """
)


def _run(*cmd: str | Path) -> subprocess.CompletedProcess:
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{cmd}: {out.stdout}\n{out.stderr}"
    return out


def test_base_install_streams_from_a_service_without_torch(cluster, tmp_path):
    src, dist = tmp_path / "src", tmp_path / "dist"  # built from a copy: no build/ in the tree
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(*IGNORE))
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", dist, src)  # fmt: skip
    (wheel,) = dist.glob("dllmserve-*.whl")
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    py = venv / "bin" / "python"
    _run(py, "-m", "pip", "install", "-q", wheel)
    out = _run(py, "-c", CLIENT_SCRIPT, cluster.target)
    assert "STREAMED" in out.stdout and " 16" in out.stdout
