"""The package as it installs: the wheel of scripts/gpu_wheel.sh holds every subpackage that
pyproject maps in, no package directory is a symlink, and the import graph (grimp, over the
installed wheel) has no cycle, neither between modules nor between subpackages; and no module
outside benchmarks/ is over 400 lines."""

from __future__ import annotations

import ast
import graphlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"dllmserve.kernels": "kernels", "dllmserve.scheduler": "scheduler",
          "dllmserve.worker": "worker"}  # fmt: skip

# Run in a child over the unpacked wheel (grimp reads the files under the package's folder, and
# an editable install keeps the mapped subpackages outside it). Prints the module graph.
GRAPH = """
import json, grimp
g = grimp.build_graph("dllmserve", cache_dir=None)
print(json.dumps({m: sorted(g.find_modules_directly_imported_by(m)) for m in g.modules}))
"""

# The torch-free modules: the scheduler and the clients import them on machines without torch.
TORCH_FREE = """
import sys
sys.modules["torch"] = None  # any import of torch now fails
import dllmserve, dllmserve.engine.config, dllmserve.engine.inputs, dllmserve.engine.protocol
import dllmserve.scheduler.validation, dllmserve.scheduler.service, dllmserve.worker.render
import dllmserve.client
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_wheel.sh"), str(out)],
        env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = out.glob("dllmserve-*.whl")
    site = out / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    return site


def _run(site: Path, code: str) -> str:
    """Python in a clean working directory with only the unpacked wheel in front of sys.path."""
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONSAFEPATH": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=site.parent, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_no_package_directory_is_a_symlink():
    for top in ("dllmserve", *MAPPED.values()):
        for d in [ROOT / top, *(p for p in (ROOT / top).rglob("*") if p.is_dir())]:
            assert not d.is_symlink(), d


def test_the_wheel_holds_the_mapped_subpackages(site):
    for package, folder in MAPPED.items():
        installed = site.joinpath(*package.split("."))
        want = {p.name for p in (ROOT / folder).glob("*.py")}
        assert want and want == {p.name for p in installed.glob("*.py")}, package
    assert (site / "dllmserve" / "assets" / "tiny-llada" / "model.safetensors").is_file()


def _cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """One cycle of a directed graph (node -> the nodes it imports), or None."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as e:
        return e.args[1]
    return None


def _subpackage(module: str) -> str:
    """dllmserve.engine.request -> dllmserve.engine; top-level modules stay themselves."""
    return ".".join(module.split(".")[:2])


def test_no_import_cycles(site):
    graph = json.loads(_run(site, GRAPH))
    assert {"dllmserve.kernels.reference", "dllmserve.worker.loop"} <= set(graph)
    assert _cycle(graph) is None, _cycle(graph)
    packages: dict[str, set[str]] = {}
    for module, imported in graph.items():
        src = _subpackage(module)
        if module == "dllmserve":
            continue  # the package's __init__ re-exports; it imports, nothing imports through it
        targets = {_subpackage(m) for m in imported} - {src, "dllmserve"}
        packages.setdefault(src, set()).update(targets)
    squashed = {k: sorted(v) for k, v in packages.items()}
    assert _cycle(squashed) is None, _cycle(squashed)


def test_the_request_checks_import_without_torch(site):
    _run(site, TORCH_FREE)


def test_no_module_outside_benchmarks_is_over_400_lines():
    """One concept per module keeps modules short: a module past 400 lines is split, not grown
    (benchmark scripts are whole programs and exempt)."""
    skip = {".venv", "build", "benchmarks", ".git", "node_modules"}
    long = {
        str(p.relative_to(ROOT)): n
        for p in ROOT.rglob("*.py")
        if not skip & set(p.relative_to(ROOT).parts)
        and (n := len(p.read_text(encoding="utf-8").splitlines())) > 400
    }
    assert long == {}


# The product's own code (kernels/ aside where noted): what the service's anatomy rules cover.
PRODUCT = ("dllmserve", "scheduler", "worker", "kernels")
HASH_CALLS = ("hget", "hmget", "hset", "hgetall", "hsetnx", "hincrby", "hdel", "hexists")


def _product_files(*tops: str):
    for top in tops or PRODUCT:
        yield from sorted((ROOT / top).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_the_worker_and_the_scheduler_meet_only_in_the_contract():
    """The worker imports nothing of the scheduler (nor the reverse); the contract package
    (dllmserve.broker) imports neither."""
    for p in _product_files("worker"):
        bad = {m for m in _imports(p) if m.startswith("dllmserve.scheduler")}
        assert not bad, (p, bad)
    for p in _product_files("scheduler"):
        bad = {m for m in _imports(p) if m.startswith("dllmserve.worker")}
        assert not bad, (p, bad)
    for p in (ROOT / "dllmserve" / "broker").glob("*.py"):
        bad = {m for m in _imports(p) if m.startswith(("dllmserve.worker", "dllmserve.scheduler"))}
        assert not bad, (p, bad)


def test_redis_hash_fields_are_read_and_written_in_the_contract_only():
    broker = ROOT / "dllmserve" / "broker"
    for p in _product_files():
        if p.parent == broker:
            continue
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in HASH_CALLS:
                raise AssertionError(f"{p.relative_to(ROOT)}:{node.lineno} calls .{node.attr}")


def test_no_dispatch_grouping_by_sparse_config_and_no_opaque_reply_reader():
    for p in [*_product_files(), *(ROOT / "tests").rglob("*.py")]:
        if p == Path(__file__).resolve():
            continue
        text = p.read_text(encoding="utf-8")
        for word in ("match_key", "group_key", "q.s("):
            assert word not in text, (p.relative_to(ROOT), word)


# Functions over 80 lines still to split (each named here, so no new one can join them).
LONG_FUNCTIONS_LEFT: set[str] = set()


def test_no_product_function_outside_kernels_is_over_80_lines():
    """A function does one job: past 80 lines it is split (kernels/ are Triton programs)."""
    long = set()
    for p in _product_files("dllmserve", "scheduler", "worker"):
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if node.end_lineno - node.lineno + 1 > 80:
                    long.add(f"{p.relative_to(ROOT)}:{node.name}")
    assert long <= LONG_FUNCTIONS_LEFT, long - LONG_FUNCTIONS_LEFT


def test_the_formatter_mostly_wins_in_product_code():
    """`# fmt: skip` is for the rare table the formatter would spread over a screen."""
    n = sum(p.read_text(encoding="utf-8").count("# fmt: skip") for p in _product_files())
    assert n < 60, n
