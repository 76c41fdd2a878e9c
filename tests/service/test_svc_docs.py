"""The examples of README.md and docs/*.md run, and print the right answer, on the demo model.

A code block is runnable when the line before its fence is `<!-- test: demo expect="..." -->`;
each `expect` is text its output must contain (the demo model answers lookups, copies and
additions: dllmserve/assets/tiny-llada/MODEL_CARD.md). Each block runs as written (python
blocks with this interpreter, bash blocks with bash) against a service of the test's own, a
scheduler, a CPU worker serving the demo model and the HTTP gateway, whose addresses replace
the documented defaults (localhost:50051 and localhost:8000; $DLLMSERVE_TARGET for
`dllmserve generate`), from the repository's root.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from http_util import add_gateway
from svc_util import Cluster

from dllmserve.assets import default_model_path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"^<!-- test: demo(?P<attrs>.*?)-->\s*$")
FENCE = re.compile(r"^```(?P<lang>\w*)\s*$")


@dataclass(frozen=True)
class Example:
    where: str  # file:line, the test's id
    lang: str
    code: str
    expect: tuple[str, ...]


def examples() -> list[Example]:
    out = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            marked = MARKER.match(line)
            if not marked:
                continue
            fence = FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
            assert fence, f"{path.name}:{i + 1}: the marker must precede a code fence"
            end = next(j for j in range(i + 2, len(lines)) if lines[j].startswith("```"))
            expect = tuple(re.findall(r'expect="([^"]*)"', marked["attrs"]))
            assert expect, f"{path.name}:{i + 1}: say what the example prints (expect=)"
            code = "\n".join(lines[i + 2 : end]) + "\n"
            out.append(Example(f"{path.relative_to(ROOT)}:{i + 2}", fence["lang"], code, expect))
    return out


EXAMPLES = examples()


def test_the_readme_and_docs_mark_their_examples():
    where = {e.where.split(":")[0] for e in EXAMPLES}
    assert {"README.md", "docs/http.md", "docs/service.md"} <= where, where
    assert all(e.lang in ("python", "bash") for e in EXAMPLES), EXAMPLES


@pytest.fixture(scope="module")
def demo_service(tmp_path_factory):
    """A scheduler, one CPU worker serving the demo model (as `dllmserve serve --demo` does)
    and the gateway."""
    c = Cluster(tmp_path_factory.mktemp("docs"), default_model_path())
    try:
        c.add_scheduler()
        c.add_worker("--max-num-seqs", "4")
        base = add_gateway(c)
        yield c.target, base.removeprefix("http://")
    finally:
        c.close()


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.where for e in EXAMPLES])
def test_example_prints_the_right_answer(example: Example, demo_service, tmp_path):
    target, http = demo_service
    code = example.code.replace("localhost:50051", target).replace("localhost:8000", http)
    script = tmp_path / ("example.py" if example.lang == "python" else "example.sh")
    script.write_text(code)
    runner = [sys.executable] if example.lang == "python" else ["bash", "-euo", "pipefail"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DLLMSERVE_TARGET": target,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    out = subprocess.run([*runner, str(script)], capture_output=True, text=True, timeout=600,
                         env=env, cwd=ROOT)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    for text in example.expect:
        assert text in out.stdout, (text, out.stdout, out.stderr[-2000:])
