"""/metrics of the gateway, scheduler and worker (parsed with prometheus_client's parser), the
worker's probes, the request lifecycle log lines, and the ports' fault paths."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import openai
import pytest
from http_util import add_gateway, families, get, scrape, total
from svc_util import Cluster, wait_for

from dllmserve.assets import default_model_path
from dllmserve.broker import redis_keys as rk
from dllmserve.client import Accepted, Client
from dllmserve.scheduler.local_redis import free_port
from dllmserve.worker.http import Probes

MESSAGES = [{"role": "user", "content": "Repeat exactly: serving diffusion models"}]
P = "dllmserve:"


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("metrics"), default_model_path())
    try:
        c.metrics_port, c.http_port = free_port(), free_port()
        c.add_scheduler("--metrics-port", str(c.metrics_port))
        c.worker = c.add_worker("--http-port", str(c.http_port))
        c.base = add_gateway(c)
        yield c
    finally:
        c.close()


PHASES = ("FULL", "SELECT", "REUSE")


def _scrapes(svc) -> tuple[dict, dict, dict]:
    return (
        scrape(f"http://127.0.0.1:{svc.http_port}/metrics"),
        scrape(f"http://127.0.0.1:{svc.metrics_port}/metrics"),
        scrape(svc.base + "/metrics"),
    )


def test_step_time_is_labelled_with_the_phase_the_engine_ran(svc):
    """A sparse request of 2 blocks of 8 steps with delay 1: per block one FULL step, one
    SELECT and six REUSE (the engine's own StepOutput.phase, not a guess of the worker's)."""
    w0 = scrape(f"http://127.0.0.1:{svc.http_port}/metrics")
    oai = openai.OpenAI(base_url=svc.base + "/v1", api_key="x", max_retries=0)
    sparse = {"retention_ratio": 0.5, "delay_step": 1, "default_block_len": 8}
    done = oai.chat.completions.create(
        model=svc.model.name, messages=MESSAGES, max_tokens=16,
        extra_body={"steps": 16, "sparse_config": sparse, "stop_at_eos": False},
    )  # fmt: skip
    assert done.usage.model_extra["denoising_steps"] == 16
    w1 = scrape(f"http://127.0.0.1:{svc.http_port}/metrics")
    name = P + "step_duration_seconds_count"
    got = {ph: total(w1, name, phase=ph) - total(w0, name, phase=ph) for ph in PHASES}
    assert got == {"FULL": 2, "SELECT": 2, "REUSE": 12}


def test_counters_and_histograms_move_by_the_requests_made(svc):
    model = svc.model.name
    w0, s0, g0 = _scrapes(svc)
    oai = openai.OpenAI(base_url=svc.base + "/v1", api_key="x", max_retries=0)
    done = [
        oai.chat.completions.create(model=model, messages=MESSAGES, max_tokens=16 * (i + 1),
                                    extra_body={"steps": 8 * (i + 1), "seed": i})
        for i in range(3)
    ]  # fmt: skip
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model=model, messages=MESSAGES, max_tokens=16,
                                    extra_body={"steps": 0})  # fmt: skip
    w1, s1, g1 = _scrapes(svc)

    def delta(a, b, name, **labels):
        return total(b, name, **labels) - total(a, name, **labels)

    steps = sum(d.usage.model_extra["denoising_steps"] for d in done)
    assert steps == 8 + 16 + 24  # no early stop of a block on the tiny model's copies
    # Worker: finished by reason, tokens, the latency histograms, the engine's iterations.
    assert (
        delta(w0, w1, P + "request_finished_total", model_name=model, finished_reason="stop")
        + delta(w0, w1, P + "request_finished_total", finished_reason="length")
        == 3
    )
    assert delta(w0, w1, P + "generation_tokens_total", model_name=model) == sum(
        d.usage.completion_tokens for d in done)  # fmt: skip
    assert delta(w0, w1, P + "prompt_tokens_total") == sum(d.usage.prompt_tokens for d in done)
    for h in ("e2e_request_latency_seconds", "time_to_first_step_seconds",
              "request_queue_time_seconds"):  # fmt: skip
        assert delta(w0, w1, f"{P}{h}_count", model_name=model) == 3, h
    # Sequential requests: every iteration stepped one request, once per denoising step.
    assert delta(w0, w1, P + "iteration_batch_size_sum") == steps
    assert delta(w0, w1, P + "iteration_batch_size_count") == steps
    assert delta(w0, w1, P + "step_duration_seconds_count") == steps
    assert delta(w0, w1, P + "step_duration_seconds_count", phase="FULL") == steps  # dense
    assert total(w1, P + "num_requests_running") == 0
    assert total(w1, P + "cache_pages_capacity") > 0 and total(w1, P + "cache_pages_used") == 0
    # Scheduler: accepted / refused / dispatched, and the service's state from Redis.
    assert delta(s0, s1, P + "requests_accepted_total", model_name=model) == 3
    assert delta(s0, s1, P + "requests_refused_total", code="INVALID_ARGUMENT") == 1
    assert delta(s0, s1, P + "requests_dispatched_total") == 3
    assert total(s1, P + "workers", model_name=model, state="ready") == 1
    assert 0 <= total(s1, P + "worker_heartbeat_age_seconds", model_name=model) < 30
    assert total(s1, P + "dispatcher_leader") == 1 and total(s1, P + "redis_up") == 1
    assert total(s1, P + "queue_length") == 0 and total(s1, P + "free_slots") > 0
    # Gateway: the HTTP requests and the generations they ran.
    route = "/v1/chat/completions"
    assert delta(g0, g1, P + "http_requests_total", route=route, status="200") == 3
    assert delta(g0, g1, P + "http_requests_total", route=route, status="400") == 1
    assert delta(g0, g1, P + "http_generations_total", model_name=model) == 3


def test_denoising_histograms_count_forwards_commits_and_their_wait(svc):
    """Two requests of 2 blocks x 4 steps committing 2 tokens a step, one with cfg (two
    forwards a step): tokens per forward 2 and 1, forwards per request 8 and 16; each of the
    32 positions has a time to commit, zero for the ones a block's first step committed."""
    url = f"http://127.0.0.1:{svc.http_port}/metrics"
    w0 = scrape(url)
    oai = openai.OpenAI(base_url=svc.base + "/v1", api_key="x", max_retries=0)
    body = {"steps": 8, "block_length": 8, "stop_at_eos": False, "seed": 1}
    for cfg in (0.0, 1.0):
        oai.completions.create(model=svc.model.name, prompt="Count the forwards", max_tokens=16,
                               extra_body={**body, "cfg_scale": cfg})  # fmt: skip
    w1 = scrape(url)

    def delta(name, **labels):
        return total(w1, P + name, **labels) - total(w0, P + name, **labels)

    model = svc.model.name
    assert delta("tokens_committed_per_forward_count", model_name=model) == 16
    assert delta("tokens_committed_per_forward_sum") == 8 * 2 + 8 * 1
    assert delta("tokens_committed_per_forward_bucket", le="0.5") == 0
    assert delta("tokens_committed_per_forward_bucket", le="1.0") == 8
    assert delta("tokens_committed_per_forward_bucket", le="2.0") == 16
    assert delta("request_forward_passes_count", model_name=model) == 2
    assert delta("request_forward_passes_sum") == 8 + 16
    assert delta("request_forward_passes_bucket", le="8.0") == 1
    assert delta("position_time_to_commit_seconds_count", model_name=model) == 32
    assert delta("position_time_to_commit_seconds_bucket", le="0.001") >= 2 * 2 * 2
    assert delta("position_time_to_commit_seconds_sum") > 0


def test_worker_probes(svc):
    port = svc.http_port
    assert get(f"http://127.0.0.1:{port}/livez")[0] == 200
    assert get(f"http://127.0.0.1:{port}/readyz") == (200, "ready\n")
    assert get(f"http://127.0.0.1:{port}/nothing")[0] == 404


def test_probes_say_why():
    """A loop that stopped iterating fails /livez; loading, unregistered or draining fail
    /readyz (the states a process test cannot hold still)."""

    class Loop:
        last_iteration = 0.0
        stop = threading.Event()

    class Beat:
        registered = False

    p = Probes(stall_s=5)
    assert p.live() == (True, "loading the model") and not p.ready()[0]
    p.loop, p.heartbeat = Loop(), Beat()
    assert p.live()[0] is False and "not iterated" in p.live()[1]
    assert p.ready() == (False, "not registered with Redis yet")
    Beat.registered = True
    Loop.stop.set()
    assert p.ready() == (False, "draining")


def test_lifecycle_lines_in_json(tmp_path, tiny_model):
    """A request's events appear with its id, in order, as JSON; an expected error is one line
    without a traceback; the waiting-for-workers warning is logged once."""
    c = Cluster(tmp_path, tiny_model)
    try:
        env = {"DLLMSERVE_LOG_FORMAT": "json"}
        port = free_port()
        sched = c._spawn(["scheduler", "--redis-url", c.url, "--listen", f"127.0.0.1:{port}",
                          "--lease-ttl-ms", "1500"], env=env)  # fmt: skip
        c.schedulers.append((sched, port))
        wait_for(lambda: c._log_has(sched, "DLLMSERVE_SCHEDULER_READY"), 60, what="scheduler")
        with Client(c.target) as cl:
            queued = threading.Thread(
                target=lambda: cl.generate_text(
                    "early", request_id="log-early", sampling_params={"gen_length": 16, "steps": 8}
                )
            )
            queued.start()  # no worker yet: it waits, and the scheduler says so once
            wait_for(lambda: _has(sched, "no ready worker"), 30, what="warning")
            worker = c._spawn(
                [
                    "worker",
                    "--redis-url",
                    c.url,
                    "--model",
                    str(c.model),
                    "--device",
                    "cpu",
                    "--heartbeat-interval",
                    "0.3",
                ],
                env=env,
            )
            c.workers.append(worker)
            c.wait_worker(worker)
            queued.join(120)
            cl.generate_text("hello", request_id="log-1",
                             sampling_params={"gen_length": 16, "steps": 8})  # fmt: skip
            with pytest.raises(grpc.RpcError):
                cl.generate_text("bad", request_id="log-bad", sampling_params={"steps": 0})
        lines = _json_lines(sched) + _json_lines(worker)

        def events(p):
            return [x for x in _json_lines(p) if x.get("request_id") == "log-1"]

        # In order within each process (the dispatcher's line may land after the worker's
        # admission: another process, no common clock order).
        on_sched, on_worker = events(sched), events(worker)
        assert [x["event"] for x in on_sched] == ["accepted", "dispatched"]
        assert [x["event"] for x in on_worker] == ["admitted", "first_step", "finished"]
        assert on_sched[0]["ts"] <= on_worker[0]["ts"]
        mine = on_sched + on_worker
        fin = mine[-1]
        assert fin["worker"] == worker.worker_id == on_sched[1]["worker"]
        assert fin["attempt"] == 1 and fin["steps"] == 8 and fin["total_ms"] >= 0
        (bad,) = [x for x in lines if x.get("request_id") == "log-bad"]
        assert bad["event"] == "refused" and bad["code"] == "INVALID_ARGUMENT"
        assert "exception" not in bad and "Traceback" not in Path(sched.log_path).read_text()
        warned = [x for x in _json_lines(sched) if "no ready worker" in x["message"]]
        assert len(warned) == 1 and warned[0]["level"] == "WARNING"
    finally:
        c.close()


def _has(p: subprocess.Popen, text: str) -> bool:
    return text in Path(p.log_path).read_text(errors="replace")


def _json_lines(p: subprocess.Popen) -> list[dict]:
    out = []
    for line in Path(p.log_path).read_text(errors="replace").splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


@pytest.mark.parametrize("cmd", ["scheduler", "worker", "gateway"])
def test_a_taken_port_is_an_error_naming_the_flag(cmd, tmp_path, rserver):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        args = {
            "scheduler": ["--redis-url", "redis://127.0.0.1:1/0", "--listen", "127.0.0.1:0",
                          "--metrics-port", port],
            # a worker checks Redis before anything else: give it a real one
            "worker": ["--redis-url", rserver.url, "--http-port", port],
            "gateway": ["--listen", f"127.0.0.1:{port}"],
        }[cmd]  # fmt: skip
        out = subprocess.run([sys.executable, "-m", "dllmserve.cli", cmd, *args],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    flag = {"scheduler": "--metrics-port", "worker": "--http-port", "gateway": "--listen"}[cmd]
    assert out.returncode == 2, out.stderr
    assert f"dllmserve {cmd}: {flag}" in out.stderr and "Traceback" not in out.stderr


def test_the_grafana_dashboard_reads_exported_metrics(svc):
    """Every metric a panel of deploy/grafana/dllmserve-dashboard.json queries is exported by
    the gateway, the scheduler or a worker (a renamed metric would leave a panel empty)."""
    import re

    root = Path(__file__).resolve().parents[2]
    dash = json.loads((root / "deploy" / "grafana" / "dllmserve-dashboard.json").read_text())
    urls = [f"http://127.0.0.1:{svc.http_port}/metrics",
            f"http://127.0.0.1:{svc.metrics_port}/metrics", svc.base + "/metrics"]  # fmt: skip
    exported = set().union(*(families(u) for u in urls))
    queried = set()
    for panel in dash["panels"]:
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            names = re.findall(r"dllmserve:[a-z0-9_]+", t["expr"])
            queried |= {n if n in exported else re.sub(r"_(total|bucket|sum|count)$", "", n)
                        for n in names}  # fmt: skip
    assert queried and queried <= exported, sorted(queried - exported)


def test_a_draining_worker_is_not_ready(svc):
    """SIGTERM: /readyz turns 503 while the running request finishes. (Last in the module:
    it replaces the module's worker.)"""
    extra_port = free_port()
    w = svc.add_worker("--http-port", str(extra_port))
    svc.kill(svc.worker, signal.SIGKILL)  # only the new worker takes the next request
    long = {"gen_length": 480, "steps": 480, "stop_at_eos": False}
    with Client(svc.target) as cl:
        it = cl.generate("drain me", request_id="drain-1", sampling_params=long)
        assert isinstance(next(it), Accepted)
        wait_for(lambda: svc.req("drain-1").get("worker") == w.worker_id
                 and svc.req("drain-1").get("status") == rk.RUNNING, what="running")  # fmt: skip
        w.send_signal(signal.SIGTERM)
        url = f"http://127.0.0.1:{extra_port}/readyz"
        assert wait_for(lambda: get(url) == (503, "draining\n"), 30, what="503")
        assert get(f"http://127.0.0.1:{extra_port}/livez")[0] == 200
        it.close()
