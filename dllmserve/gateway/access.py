"""Each HTTP request's id, its access-log line and its counters.

An ASGI middleware sees every request before the routes and every response's status and end
(a stream's end included), so each request is identified, counted, timed and logged once,
whatever its route did. The id is the caller's `X-Request-Id` when it sends a valid one (the
characters and length the scheduler allows for request ids), else a fresh one; it is echoed
on every response and the generations run under it, so one id finds a request in the
gateway's, the scheduler's and the workers' logs. A route that answers an error leaves its
reason in `request.state.error` for the log line.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from dllmserve.gateway.errors import bad_field
from dllmserve.gateway.metrics import GatewayMetrics, route_of
from dllmserve.logs import event

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
HEADER = b"x-request-id"
QUIET = ("/metrics", "/health")  # scrapes and probes: no log line each
log = logging.getLogger("dllmserve.gateway.requests")


class AccessMiddleware:
    """Request id, counters and one `http_request` log line per HTTP request (plain ASGI)."""

    def __init__(self, app, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        state = scope.setdefault("state", {})
        given = dict(scope["headers"]).get(HEADER)
        rid = given.decode("latin-1") if given is not None else uuid.uuid4().hex
        valid = REQUEST_ID.fullmatch(rid) is not None
        state["request_id"] = rid if valid else uuid.uuid4().hex  # never echo a bad one
        rid_bytes = state["request_id"].encode()
        status = {"code": 500}

        async def watch(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = [h for h in message.get("headers", []) if h[0].lower() != HEADER]
                message = {**message, "headers": [*headers, (HEADER, rid_bytes)]}
            await send(message)

        try:
            if valid:
                await self.app(scope, receive, watch)
            else:
                await _refuse_id(state, watch)
        finally:
            seconds = time.perf_counter() - t0
            route = route_of(scope["path"])
            self.metrics.requests.labels(route, str(status["code"])).inc()
            self.metrics.duration.labels(route).observe(seconds)
            if route not in QUIET or status["code"] >= 400:
                client = scope.get("client")
                event(
                    log,
                    "http_request",
                    request_id=state["request_id"],
                    client=f"{client[0]}:{client[1]}" if client else None,
                    method=scope["method"],
                    path=scope["path"],
                    status=status["code"],
                    ms=round(seconds * 1000, 3),
                    error=state.get("error"),
                )


async def _refuse_id(state: dict, send) -> None:
    err = bad_field("X-Request-Id", "must be 1 to 128 characters of [A-Za-z0-9._:-]")
    state["error"] = err.message
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 400, "headers": headers})
    await send({"type": "http.response.body", "body": body})
