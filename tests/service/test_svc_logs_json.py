"""`--log-format json`: every line a process writes is one JSON object, its ready marker too
(the event `ready`, with the marker and its fields), so a log pipeline needs no second parser."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from svc_util import wait_for

from dllmserve.client import Client
from dllmserve.scheduler.local_redis import free_port


def _lines(p) -> list[str]:
    return [line for line in Path(p.log_path).read_text().splitlines() if line.strip()]


def test_every_line_is_json_the_ready_markers_too(make_cluster):
    c = make_cluster()
    port = free_port()
    sched = c._spawn(["--log-format", "json", "scheduler", "--redis-url", c.url,
                      "--listen", f"127.0.0.1:{port}"])  # fmt: skip
    c.schedulers.append((sched, port))
    wait_for(lambda: c._log_has(sched, "DLLMSERVE_SCHEDULER_READY"), 60, what="scheduler")
    worker = c._spawn(["--log-format", "json", "worker", "--redis-url", c.url, "--model",
                       str(c.model), "--device", "cpu", "--num-cache-pages", "256"])  # fmt: skip
    c.workers.append(worker)
    wid = c.wait_worker(worker)  # parses the JSON marker
    with Client(c.target) as client:
        assert len(client.generate_text("hi", sampling_params={"gen_length": 4, "steps": 2})
                   .token_ids) == 4  # fmt: skip
    for p in (worker, sched):  # stopped: their drain lines are read too, and no line is half
        c.kill(p, signal.SIGTERM)
    for p, marker in ((sched, "DLLMSERVE_SCHEDULER_READY"), (worker, "DLLMSERVE_WORKER_READY")):
        records = [json.loads(line) for line in _lines(p)]  # raises on a line that is not JSON
        (ready,) = [r for r in records if r.get("event") == "ready"]
        assert ready["marker"] == ready["message"] == marker and ready["level"] == "INFO"
        assert len(records) >= 3
    (ready,) = [json.loads(x) for x in _lines(worker) if "DLLMSERVE_WORKER_READY" in x]
    assert ready["id"] == wid and ready["model"] == c.model.name
