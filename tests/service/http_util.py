"""Helpers of the HTTP tests: a gateway process in front of a test cluster, and /metrics."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from svc_util import Cluster, wait_for

from dllmserve.scheduler.local_redis import free_port


def add_gateway(cluster: Cluster, *extra: str, target: str | None = None) -> str:
    """Start `dllmserve gateway` on a free port; returns its base URL."""
    port = free_port()
    p = cluster._spawn(["gateway", "--target", target or cluster.target,
                        "--listen", f"127.0.0.1:{port}", *extra])  # fmt: skip
    cluster.workers.append(p)  # killed at teardown with the rest
    cluster.gateways = [*getattr(cluster, "gateways", []), p]  # their logs: p.log_path
    wait_for(lambda: cluster._log_has(p, "DLLMSERVE_GATEWAY_READY"), 60, what="gateway")
    return f"http://127.0.0.1:{port}"


def get(url: str, timeout: float = 30) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a /metrics page: (name, sorted labels) -> value."""
    status, text = get(url)
    assert status == 200, text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def families(url: str) -> set[str]:
    """The metric families a /metrics page declares (with or without samples yet)."""
    return {f.name for f in text_string_to_metric_families(get(url)[1])}


def total(samples: dict, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels`."""
    return sum(
        v
        for (n, lab), v in samples.items()
        if n == name and all(dict(lab).get(k) == want for k, want in labels.items())
    )
