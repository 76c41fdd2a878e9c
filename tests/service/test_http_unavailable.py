"""The HTTP answers of a service that cannot serve, through real processes: no ready worker
(`/health` 503, a request fails fast with 503 + Retry-After), the gateway's deadline on its
gRPC calls (504), request state lost in Redis (a JSON request gets 503, a stream an
OpenAI-shaped error event, then [DONE]), and the per-client queue cap, which counts HTTP
callers apart (each call carries the caller's address)."""

from __future__ import annotations

import json
import threading

import httpx
from http_util import add_gateway, scrape, total
from svc_util import Cluster, wait_for

from dllmserve.assets import default_model_path
from dllmserve.broker import redis_keys as rk

BODY = {"prompt": "Repeat exactly: serving diffusion models", "max_tokens": 16, "steps": 8}
LONG = {"prompt": "lost", "max_tokens": 256, "steps": 256, "stop_at_eos": False}


def test_no_ready_worker_is_503_at_health_and_for_requests(tmp_path, tiny_model):
    c = Cluster(tmp_path, tiny_model)
    try:
        c.add_scheduler("--worker-wait", "3")
        base = add_gateway(c)
        hasty = add_gateway(c, "--rpc-timeout", "1")
        r = httpx.post(hasty + "/v1/completions", json=BODY, timeout=120)
        assert r.status_code == 504 and r.json()["error"]["type"] == "timeout", r.text
        r = httpx.get(base + "/health")
        assert r.status_code == 503 and r.json() == {"status": "unavailable",
                                                      "detail": "NOT_SERVING"}  # fmt: skip
        r = httpx.post(base + "/v1/completions", json=BODY, timeout=120)
        assert r.status_code == 503, r.text
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["type"] == "service_unavailable"
    finally:
        c.close()


def test_lost_request_state_is_503_or_an_error_event(tmp_path):
    c = Cluster(tmp_path, default_model_path())
    try:
        c.add_scheduler()
        c.add_worker()
        base = add_gateway(c)
        got: dict = {}

        def post() -> None:
            got["json"] = httpx.post(base + "/v1/completions", json=LONG, timeout=120,
                                     headers={"X-Request-Id": "lost-json"})  # fmt: skip

        t = threading.Thread(target=post)
        t.start()
        with httpx.stream("POST", base + "/v1/completions", json=LONG | {"stream": True},
                          headers={"X-Request-Id": "lost-sse"}, timeout=120) as r:  # fmt: skip
            assert r.status_code == 200
            lines = r.iter_lines()
            assert next(x for x in lines if x.startswith("data: {"))
            wait_for(lambda: c.req("lost-json").get("status") == rk.RUNNING, what="running")
            c.client.flushall()  # Redis restarted empty: both requests' state is gone
            rest = [x for x in lines if x.startswith("data: ")]
        t.join(120)
        assert rest[-1] == "data: [DONE]"
        err = json.loads(rest[-2][6:])["error"]
        assert err["type"] == "service_unavailable" and "state lost" in err["message"], err
        assert got["json"].status_code == 503, got["json"].text
        assert "state lost" in got["json"].json()["error"]["message"]
        errors = total(scrape(base + "/metrics"), "dllmserve:http_generations_total",
                       finished_reason="error")  # fmt: skip
        assert errors == 2
    finally:
        c.close()


def test_http_callers_do_not_share_one_queue_bucket(tmp_path, tiny_model):
    """Cap 1 queued request per client, no worker (so requests stay queued): a second request
    of the caller at 127.0.0.1 is refused, while the caller at 127.0.0.2, behind the same
    gateway and with the same token, still gets in."""
    c = Cluster(tmp_path, tiny_model)
    try:
        c.add_scheduler("--auth-token", "s3cret", "--max-queue-per-client", "1",
                        "--worker-wait", "120")  # fmt: skip
        base = add_gateway(c)
        auth = {"Authorization": "Bearer s3cret"}
        one, two = (httpx.Client(transport=httpx.HTTPTransport(local_address=a), headers=auth,
                                 timeout=60) for a in ("127.0.0.1", "127.0.0.2"))  # fmt: skip
        url = base + "/v1/completions"
        with one.stream("POST", url, json=BODY | {"stream": True}) as held:
            assert held.status_code == 200
            r = one.post(url, json=BODY)
            assert r.status_code == 429, r.text
            with two.stream("POST", url, json=BODY | {"stream": True}) as other:
                assert other.status_code == 200, other.read()
    finally:
        c.close()
