"""OpenTelemetry spans across processes: the worker's `dllmserve.run` span of a request is a
child of the scheduler's `dllmserve.generate` span (the traceparent travels through Redis)."""

from __future__ import annotations

import json
from pathlib import Path

from svc_util import Cluster, wait_for

from dllmserve.client import Client


def _spans(log: str) -> dict[str, dict]:
    out = {}
    for line in Path(log).read_text(errors="replace").splitlines():
        if line.startswith('{"name": "dllmserve.'):
            span = json.loads(line)
            out[span["name"]] = span
    return out


def test_a_request_is_one_trace_from_scheduler_to_worker(tmp_path, tiny_model):
    c = Cluster(tmp_path, tiny_model)
    env = {"OTEL_TRACES_EXPORTER": "console"}
    try:
        sched_port = c.add_scheduler()  # without the variable: no spans, no cost
        c.add_worker()
        with Client(f"127.0.0.1:{sched_port}") as cl:
            cl.generate_text("untraced", sampling_params={"gen_length": 16, "steps": 8})
        assert not _spans(c.schedulers[0][0].log_path) and not _spans(c.workers[0].log_path)
        c.close()
        c = Cluster(tmp_path / "traced", tiny_model)
        sched = c._spawn(["scheduler", "--redis-url", c.url, "--listen", f"127.0.0.1:{sched_port}"],
                         env=env)  # fmt: skip
        c.schedulers.append((sched, sched_port))
        wait_for(lambda: c._log_has(sched, "DLLMSERVE_SCHEDULER_READY"), 60, what="scheduler")
        worker = c.add_worker(env=env)
        with Client(c.target) as cl:
            done = cl.generate_text("traced", request_id="trace-1",
                                    sampling_params={"gen_length": 16, "steps": 8})  # fmt: skip
        wait_for(lambda: "dllmserve.generate" in _spans(sched.log_path), 30, what="span")
        gen = _spans(sched.log_path)["dllmserve.generate"]
        run = wait_for(lambda: _spans(worker.log_path).get("dllmserve.run"), 30, what="span")
        assert run["context"]["trace_id"] == gen["context"]["trace_id"]
        assert run["parent_id"] == gen["context"]["span_id"]
        assert run["attributes"]["dllmserve.request_id"] == "trace-1"
        assert run["attributes"]["dllmserve.steps"] == done.usage.steps
        assert [e["name"] for e in run["events"]] == ["first_step"]
        assert gen["resource"]["attributes"]["service.name"] == "dllmserve-scheduler"
    finally:
        c.close()
