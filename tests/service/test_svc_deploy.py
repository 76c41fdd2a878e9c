"""Deployment files: docker-compose.yml, deploy/*.Dockerfile, deploy/k8s, deploy/redis.

No Docker engine or Kubernetes cluster is available in CI, so these check the files'
structure and cross-references, run the real redis-server on the shipped redis.conf, and use
`docker compose config` / `kubectl kustomize` when those clients are installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import redis
import yaml

from dllmserve.scheduler.local_redis import find_redis_server, free_port

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _k8s_docs() -> dict[tuple[str, str], dict]:
    docs = {}
    for f in sorted(K8S.glob("*.yaml")):
        for d in yaml.safe_load_all(f.read_text()):
            if d is None:
                continue
            assert {"apiVersion", "kind"} <= set(d), f
            if d["kind"] != "Kustomization":
                assert d["metadata"]["name"], f
                docs[(d["kind"], d["metadata"]["name"])] = d
    return docs


def test_compose_runs_redis_scheduler_and_gpu_workers():
    c = _compose()
    sv = c["services"]
    assert {"redis", "scheduler", "worker-0", "worker-1"} <= set(sv)
    r = sv["redis"]
    assert r["image"].startswith("redis:7")
    assert "--requirepass" in r["command"] and "/usr/local/etc/redis/redis.conf" in r["command"]
    assert any("deploy/redis/redis.conf" in v for v in r["volumes"])
    assert "ping" in r["healthcheck"]["test"]
    for name in ("scheduler", "worker-0", "worker-1"):
        s = sv[name]
        assert s["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert "DLLMSERVE_REDIS_URL" in s["environment"], name
        assert (ROOT / s["build"]["dockerfile"]).is_file(), name
    assert sv["scheduler"]["ports"] == ["${DLLMSERVE_PORT:-50051}:50051"]
    assert "dllmserve.scheduler.healthcheck" in sv["scheduler"]["healthcheck"]["test"]
    for i, name in enumerate(("worker-0", "worker-1")):
        (dev,) = sv[name]["deploy"]["resources"]["reservations"]["devices"]
        assert dev["driver"] == "nvidia" and dev["device_ids"] == [str(i)]
        assert "gpu" in dev["capabilities"]
        assert sv[name]["command"][0] == "worker"
    assert sv["worker-1"]["profiles"] == ["multi-gpu"]
    assert "redis-data" in c["volumes"]


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker client")
def test_docker_compose_config_accepts_the_file():
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("docker has no compose plugin")
    out = subprocess.run(["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "config",
                          "-q"], capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("name", ["scheduler.Dockerfile", "worker.Dockerfile"])
def test_dockerfiles_copy_what_exists(name):
    text = (ROOT / "deploy" / name).read_text()
    (base,) = re.findall(r"^FROM (\S+)", text, re.M)
    for src in re.findall(r"^COPY (\S+)", text, re.M):
        assert (ROOT / src).exists(), f"{name} copies {src}, which is not in the repository"
    assert 'ENTRYPOINT ["dllmserve"]' in text
    assert ".[service" in text
    if name.startswith("worker"):
        assert "cuda" in base  # a CUDA runtime for the GPU
    else:
        assert "slim" in base and "EXPOSE 50051" in text


def test_kubernetes_manifests():
    docs = _k8s_docs()
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for res in kust["resources"]:
        assert (K8S / res).is_file(), res
    secret = docs[("Secret", "dllmserve")]["stringData"]
    sched = docs[("Deployment", "dllmserve-scheduler")]["spec"]["template"]["spec"]
    (c,) = sched["containers"]
    port = c["ports"][0]["containerPort"]
    assert c["readinessProbe"]["grpc"]["port"] == port == 50051
    assert c["livenessProbe"]["grpc"]["port"] == port
    svc = docs[("Service", "dllmserve")]["spec"]
    assert svc["ports"][0]["port"] == 50051 and svc["ports"][0]["appProtocol"] == "grpc"
    worker = docs[("Deployment", "dllmserve-worker")]["spec"]["template"]["spec"]
    (w,) = worker["containers"]
    assert w["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["terminationGracePeriodSeconds"] >= 60  # room to drain
    pvc = worker["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert ("PersistentVolumeClaim", pvc) in docs
    for container in (c, w):
        for env in container["env"]:
            ref = env["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "dllmserve" and ref["key"] in secret
    conf = docs[("ConfigMap", "dllmserve-redis-conf")]["data"]["redis.conf"]
    assert conf == (ROOT / "deploy" / "redis" / "redis.conf").read_text()
    rs = docs[("StatefulSet", "dllmserve-redis")]["spec"]
    assert rs["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    scaled = docs[("ScaledObject", "dllmserve-worker")]["spec"]
    assert scaled["scaleTargetRef"]["name"] == "dllmserve-worker"
    assert scaled["triggers"][0]["metadata"]["stream"] == "dllm:pending"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl")
def test_kustomize_builds():
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(out.stdout) if d]
    assert {"Deployment", "StatefulSet", "Service", "Secret", "ConfigMap"} <= set(kinds)
    assert all(
        d["metadata"].get("namespace") == "dllmserve"
        for d in yaml.safe_load_all(out.stdout)
        if d and d["kind"] != "Namespace"
    )


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
