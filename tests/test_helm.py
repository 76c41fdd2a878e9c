"""The Helm chart (deploy/helm/dllmserve), linted and rendered by Helm's own Go engine (the
PyPI package helm-python-sdk binds Helm's SDK; no helm binary can be installed here), and
every rendered Kubernetes object validated strictly with kubernetes-validate against the
oldest and the newest Kubernetes the chart supports. No cluster runs here."""

from __future__ import annotations

import logging
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "dllmserve"
KUBE_VERSIONS = ["1.27.0", kubernetes_validate.latest_version()]
REQUIRED = {"image": {"repository": "registry.example.com/team/dllmserve"},
            "redis": {"password": "s3cret"}}  # fmt: skip
EVERYTHING = {
    **REQUIRED,
    "auth": {"tokens": ["tenant-a", "tenant-b"]},
    "tls": {"enabled": True, "secretName": "dllmserve-tls"},
    "autoscaling": {"enabled": True},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
    "modelDownload": {"enabled": True, "hfTokenSecret": "hf"},
}
EXTERNAL_REDIS = {
    "image": REQUIRED["image"],
    "redis": {"enabled": False, "externalUrl": "redis://:pw@redis.example.com:6379/0"},
}
CUSTOM_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PodMonitor"}

logging.getLogger("helm_python").setLevel(logging.WARNING)


def render(values: dict) -> dict[tuple[str, str], dict]:
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name="rel", namespace="serving")
    objects = {}
    for path, text in manifests.items():
        if path.endswith(".yaml"):
            for doc in yaml.safe_load_all(text):
                if doc:
                    objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


def pod(objects, kind: str, name: str) -> dict:
    return objects[(kind, f"rel-dllmserve-{name}")]["spec"]["template"]["spec"]


def test_helm_lint_is_clean():
    for values in (REQUIRED, EVERYTHING, EXTERNAL_REDIS):
        report = helm.lint(CHART, values, strict=True)
        assert report["errors"] == [], report
        assert all(m["severity"] <= 1 for m in report["messages"]), report  # INFO at most


@pytest.mark.parametrize("values", [REQUIRED, EVERYTHING, EXTERNAL_REDIS],
                         ids=["required", "everything", "external-redis"])  # fmt: skip
def test_every_rendered_object_is_valid_kubernetes(values):
    objects = render(values)
    assert objects
    for (kind, name), obj in objects.items():
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == "rel", name
        if kind in CUSTOM_KINDS:  # CRDs kubernetes-validate has no schema for
            assert obj["apiVersion"].split("/")[0] in ("keda.sh", "monitoring.coreos.com")
            continue
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


def test_replicas_3_renders_3_gpu_workers_with_one_gpu_each():
    objects = render({**REQUIRED, "worker": {"replicas": 3}})
    workers = objects[("Deployment", "rel-dllmserve-worker")]
    assert workers["spec"]["replicas"] == 3
    (container,) = workers["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    gpu_users = [c["name"] for o in objects.values() if o["kind"] in ("Deployment", "StatefulSet")
                 for c in o["spec"]["template"]["spec"]["containers"]
                 if "nvidia.com/gpu" in c.get("resources", {}).get("limits", {})]  # fmt: skip
    assert gpu_users == ["worker"]
    assert "--gpu-lock-dir" not in " ".join(container["args"])  # the device plugin's one GPU


def test_missing_or_bad_values_fail_naming_the_field():
    cases = [
        ({"redis": {"password": "pw"}}, "image.repository"),
        ({"image": REQUIRED["image"]}, "redis.password"),
        ({"image": REQUIRED["image"], "redis": {"enabled": False}}, "redis.externalUrl"),
        ({**REQUIRED, "tls": {"enabled": True}}, "tls.secretName"),
        ({**REQUIRED, "worker": {"replicas": -1}}, "/worker/replicas"),
        ({**REQUIRED, "worker": {"model": "relative/dir"}}, "/worker/model"),
    ]
    for values, field in cases:
        with pytest.raises(helm.HelmError, match=field):
            render(values)


def test_images_come_from_the_configured_repository():
    objects = render({**REQUIRED, "image": {**REQUIRED["image"], "tag": "1.2.3"}})
    images = {c["image"] for o in objects.values() if o["kind"] in ("Deployment", "StatefulSet")
              for c in o["spec"]["template"]["spec"]["containers"]}  # fmt: skip
    repo = REQUIRED["image"]["repository"]
    assert images == {f"{repo}-scheduler:1.2.3", f"{repo}-worker:1.2.3", "redis:7.0.15"}


def test_probes_services_and_monitors_follow_the_process_contract():
    objects = render(EVERYTHING)
    (w,) = pod(objects, "Deployment", "worker")["containers"]
    assert w["ports"] == [{"name": "http", "containerPort": 8081}]
    assert "--http-port=8081" in w["args"]
    assert w["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert w["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert w["startupProbe"]["httpGet"]["path"] == "/livez"
    (s,) = pod(objects, "Deployment", "scheduler")["containers"]
    assert s["readinessProbe"]["grpc"] == {"port": 50051}  # NOT_SERVING until a worker is ready
    assert s["livenessProbe"]["grpc"] == {"port": 50051, "service": "liveness"}  # the process
    assert {"--listen=0.0.0.0:50051", "--metrics-port=9090"} <= set(s["args"])
    (g,) = pod(objects, "Deployment", "gateway")["containers"]
    assert g["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert g["ports"] == [{"name": "http", "containerPort": 8000}]
    assert g["env"] == [{"name": "DLLMSERVE_TARGET", "value": "rel-dllmserve-scheduler:50051"}]
    service_ports = {
        obj["spec"]["selector"]["app.kubernetes.io/component"]: {
            p["name"]: p["port"] for p in obj["spec"]["ports"]}
        for obj in objects.values() if obj["kind"] == "Service"
    }  # fmt: skip
    assert service_ports["scheduler"] == {"grpc": 50051, "metrics": 9090}
    assert service_ports["gateway"] == {"http": 8000}
    monitor = objects[("ServiceMonitor", "rel-dllmserve")]["spec"]
    components = monitor["selector"]["matchExpressions"][1]["values"]
    for endpoint in monitor["endpoints"]:
        assert endpoint["path"] == "/metrics"
        assert any(endpoint["port"] in service_ports[c] for c in components)
    pods = objects[("PodMonitor", "rel-dllmserve-worker")]["spec"]
    assert pods["selector"]["matchLabels"]["app.kubernetes.io/component"] == "worker"
    assert pods["podMetricsEndpoints"][0]["port"] == w["ports"][0]["name"]


def test_secrets_have_no_default_and_feed_every_process():
    objects = render(EVERYTHING)
    redis_secret = objects[("Secret", "rel-dllmserve-redis")]["stringData"]
    assert redis_secret == {"redis-url": "redis://:s3cret@rel-dllmserve-redis:6379/0",
                            "redis-password": "s3cret"}  # fmt: skip
    auth = objects[("Secret", "rel-dllmserve-auth")]["stringData"]
    assert auth == {"auth-tokens": "tenant-a,tenant-b"}
    for name in ("scheduler", "worker"):
        env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in
               pod(objects, "Deployment", name)["containers"][0]["env"]}  # fmt: skip
        assert env["DLLMSERVE_REDIS_URL"] == {"name": "rel-dllmserve-redis", "key": "redis-url"}
    (sched,) = pod(objects, "Deployment", "scheduler")["containers"]
    tokens = [e for e in sched["env"] if e["name"] == "DLLMSERVE_AUTH_TOKEN"]
    assert tokens[0]["valueFrom"]["secretKeyRef"]["key"] == "auth-tokens"
    assert "change-me" not in yaml.safe_dump(list(objects.values()))


def test_redis_runs_the_shipped_config_or_is_external():
    objects = render(REQUIRED)
    conf = objects[("ConfigMap", "rel-dllmserve-redis")]["data"]["redis.conf"]
    assert conf.strip() == (ROOT / "deploy" / "redis" / "redis.conf").read_text().strip()
    redis = objects[("StatefulSet", "rel-dllmserve-redis")]["spec"]
    assert redis["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    external = render(EXTERNAL_REDIS)
    assert not [k for k in external if k[1] == "rel-dllmserve-redis" and k[0] != "Secret"]
    url = external[("Secret", "rel-dllmserve-redis")]["stringData"]["redis-url"]
    assert url == EXTERNAL_REDIS["redis"]["externalUrl"]


def test_tls_autoscaling_and_model_download():
    objects = render(EVERYTHING)
    (sched,) = pod(objects, "Deployment", "scheduler")["containers"]
    assert {"--tls-cert=/etc/dllmserve/tls/tls.crt", "--tls-key=/etc/dllmserve/tls/tls.key"} <= (
        set(sched["args"]))  # fmt: skip
    assert pod(objects, "Deployment", "scheduler")["volumes"][0]["secret"]["secretName"] == (
        "dllmserve-tls")  # fmt: skip
    workers = objects[("Deployment", "rel-dllmserve-worker")]
    assert "replicas" not in workers["spec"]  # KEDA owns the count
    scaled = objects[("ScaledObject", "rel-dllmserve-worker")]["spec"]
    assert scaled["scaleTargetRef"]["name"] == "rel-dllmserve-worker"
    (trigger,) = scaled["triggers"]
    assert trigger["metadata"]["stream"] == "dllm:pending"
    assert trigger["metadata"]["address"] == "rel-dllmserve-redis:6379"
    auth = objects[("TriggerAuthentication", trigger["authenticationRef"]["name"])]["spec"]
    assert auth["secretTargetRef"][0]["key"] == "redis-password"
    job = objects[("Job", "rel-dllmserve-model-download")]["spec"]["template"]["spec"]
    (download,) = job["containers"]
    env = {e["name"]: e.get("value") for e in download["env"]}
    assert "hf download" in download["command"][-1]
    assert env["MODEL"] == "/models/LLaDA-8B-Instruct" and env["REPO"]
    (wait,) = workers["spec"]["template"]["spec"]["initContainers"]
    assert ".dllmserve-complete" in wait["command"][-1] and ".dllmserve-complete" in (
        download["command"][-1])  # fmt: skip


def test_container_args_are_flags_the_cli_knows():
    from dllmserve.cli import build_parser

    objects = render(EVERYTHING)
    for name in ("scheduler", "gateway", "worker"):
        (container,) = pod(objects, "Deployment", name)["containers"]
        assert build_parser().parse_args(container["args"]).cmd == name  # exits on a bad flag


@pytest.mark.parametrize("values", [REQUIRED, EVERYTHING])
def test_listening_on_every_interface_is_explicit_or_behind_tokens(values):
    """The pods listen on 0.0.0.0 (a Service reaches them): the scheduler has tokens, or says
    --insecure; the gateway (no tokens of its own) always says it. The CLI would refuse else."""
    from dllmserve.cli import build_parser
    from dllmserve.cli.common import check_listen

    objects = render(values)
    for name in ("scheduler", "gateway"):
        (container,) = pod(objects, "Deployment", name)["containers"]
        args = build_parser().parse_args(container["args"])
        tokens = any(e["name"] == "DLLMSERVE_AUTH_TOKEN" for e in container.get("env", []))
        assert args.listen.startswith("0.0.0.0:")
        assert args.insecure == (name == "gateway" or not tokens), (name, container["args"])
        if name == "scheduler":  # without tokens, the gateway's caller header names the bucket
            assert args.trust_client_header == (not tokens)
        if not tokens:
            check_listen(args.listen, args.insecure, "no token")  # raises if it would refuse
