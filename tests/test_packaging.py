"""The install and the images agree: the lock files pin every requirement of the extras each
image installs, inside pyproject's bounds; every version a Dockerfile pins is the lock's; the
images install nothing but the lock; and CI runs inside the same bounds."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
REQS = ROOT / "deploy" / "requirements"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# The images' platform, which the locks were resolved for (scripts/lock.py).
IMAGE_ENV = {
    **default_environment(),
    **{"python_version": "3.11", "python_full_version": "3.11.14", "sys_platform": "linux"},
    **{"platform_system": "Linux", "platform_machine": "x86_64"},
}
IMAGES = {"scheduler": ["service"], "worker": ["service", "engine", "kernels"]}


def lock(name: str) -> dict[str, Version]:
    text = (REQS / f"{name}.txt").read_text()
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\\n    --hash=sha256:[0-9a-f]{64}$", text, re.M)
    assert len(pins) == text.count("=="), f"{name}.txt: every pin carries its wheel's hash"
    return {canonicalize_name(n): Version(v) for n, v in pins}


def requirements(extras: list[str]) -> list[Requirement]:
    reqs = [Requirement(r) for r in PROJECT["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in PROJECT["optional-dependencies"][extra]]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(IMAGE_ENV)]


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_lock_pins_every_requirement_within_the_bounds(image):
    pins = lock(image)
    for req in requirements(IMAGES[image]):
        name = canonicalize_name(req.name)
        assert name in pins, f"{image}.txt lacks {req.name}: run scripts/lock.py"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{image}.txt pins {req.name}=={pins[name]} outside pyproject's {req}"
        )


def test_lock_inputs_name_what_the_locks_pin():
    pins = lock("worker")
    for line in (REQS / "worker.in").read_text().splitlines():
        m = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", line)
        if m:
            assert pins[canonicalize_name(m[1])] == Version(m[2]), line


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_dockerfile_pins_match_the_lock_and_install_only_it(image):
    text = (ROOT / "deploy" / f"{image}.Dockerfile").read_text()
    pins = lock(image)
    for name, version in re.findall(r"\b([A-Za-z][A-Za-z0-9_.-]*)==([0-9][^\s\"']*)", text):
        assert pins.get(canonicalize_name(name)) == Version(version), (
            f"{image}.Dockerfile pins {name}=={version}, the lock {pins.get(name)}"
        )
    installs = re.findall(r"pip install ([^\n]+)", text)
    assert installs == [
        "--require-hashes --no-deps -r /tmp/requirements.txt",
        "--no-deps --no-build-isolation /src",
    ]
    assert f"COPY deploy/requirements/{image}.txt /tmp/requirements.txt" in text
    bases = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(bases) == 2 and len(set(bases)) == 1, "one pinned base for both stages"
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", bases[0]), bases[0]  # the lock's


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_dockerfile_runs_unprivileged_with_labels_and_a_healthcheck(image):
    text = (ROOT / "deploy" / f"{image}.Dockerfile").read_text()
    runtime = text.split("\nFROM ")[-1]
    assert "USER 10001:10001" in runtime and "useradd --system --uid 10001" in runtime
    for label in ("title", "version", "revision", "created", "licenses"):
        assert f"org.opencontainers.image.{label}=" in runtime, label
    assert "HEALTHCHECK" in runtime and 'ENTRYPOINT ["dllmserve"]' in runtime
    assert ("8081/readyz" if image == "worker" else 'healthcheck", "localhost:50051') in runtime


def test_dockerignore_keeps_the_context_to_what_the_images_build():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    ignored = [x for x in lines if x and not x.startswith("#")]
    assert {".git", ".venv", "tests", "benchmarks"} <= set(ignored)
    for needed in ("pyproject.toml", "README.md", "dllmserve", "deploy/requirements"):
        assert needed not in ignored


@pytest.mark.parametrize("dist", ["torch", "transformers", "protobuf", "grpcio"])
def test_ci_runs_within_the_bounds(dist):
    """The bounds' upper ends are what CI tests: the newest release each range allows."""
    reqs = {canonicalize_name(r.name): r for r in requirements(["engine", "service"])}
    installed = Version(metadata.version(dist))
    assert reqs[canonicalize_name(dist)].specifier.contains(installed, prereleases=True), (
        f"{dist} {installed} is outside pyproject's {reqs[canonicalize_name(dist)]}"
    )


def test_every_place_that_names_the_release_names_the_packages_version():
    import yaml

    from dllmserve import __version__

    chart = yaml.safe_load((ROOT / "deploy" / "helm" / "dllmserve" / "Chart.yaml").read_text())
    assert chart["appVersion"] == __version__
    compose = (ROOT / "docker-compose.yml").read_text()
    assert set(re.findall(r"\$\{DLLMSERVE_TAG:-([^}]+)\}", compose)) == {__version__}
    for image in IMAGES:
        text = (ROOT / "deploy" / f"{image}.Dockerfile").read_text()
        assert f"ARG VERSION={__version__}\n" in text, image


def test_wheel_ships_every_source_file_and_the_build_warns_of_no_package(tmp_path):
    """A wheel built from the package folders holds each of their files (the playground's static
    page, the tiny checkpoint, every module), and setuptools names no folder it would leave out.
    Built from a copy, so the checkout's build/ is left alone."""
    src = tmp_path / "src"
    junk = shutil.ignore_patterns("__pycache__", "*.pyc")
    setuptools_cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {"dllmserve": "dllmserve", **setuptools_cfg["package-dir"]}
    for folder in folders.values():
        shutil.copytree(ROOT / folder, src / folder, ignore=junk)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation"]
        + ["-w", str(tmp_path / "out"), str(src)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    assert "absent from the `packages` configuration" not in build.stdout + build.stderr
    (wheel,) = (tmp_path / "out").glob("dllmserve-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    for package, folder in folders.items():
        for path in (src / folder).rglob("*"):
            if path.is_file():
                name = "/".join([*package.split("."), *path.relative_to(src / folder).parts])
                assert name in shipped, f"the wheel lacks {name}"
