"""The worker's small HTTP server: /metrics, /livez and /readyz for Prometheus and probes.

It starts before the model loads, on a thread of its own, so a probe gets an answer (and
`/readyz` says why it is not ready) during a load that can take minutes.

- `/livez`: 200 while the model loads and while the engine loop has iterated within
  `stall_s` (an idle loop iterates every few hundred milliseconds); 503 when it is stuck.
- `/readyz`: 200 once the model is loaded and the worker registered with Redis, and not
  draining; 503 with the reason otherwise.
- `/metrics`: the worker's registry (worker/metrics.py) in Prometheus' text format.
"""

from __future__ import annotations

import threading
import time
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from dllmserve.errors import ListenError

STALL_S = 60.0  # a loop silent this long is stuck (the longest step of a big batch is seconds)


class Probes:
    """What the probes read; `loop` and `heartbeat` are set once the model is loaded."""

    def __init__(self, stall_s: float = STALL_S) -> None:
        self.stall_s = stall_s
        self.loop = None
        self.heartbeat = None
        self.registry: CollectorRegistry | None = None

    def live(self) -> tuple[bool, str]:
        if self.loop is None:
            return True, "loading the model"
        idle = time.monotonic() - self.loop.last_iteration
        if idle > self.stall_s:
            return False, f"the engine loop has not iterated for {idle:.0f} s"
        return True, "the engine loop is iterating"

    def ready(self) -> tuple[bool, str]:
        if self.loop is None:
            return False, "loading the model"
        if self.heartbeat is None or not self.heartbeat.registered:
            return False, "not registered with Redis yet"
        if self.loop.stop.is_set():
            return False, "draining"
        return True, "ready"


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args) -> None:  # probes every few seconds: no access log
        pass


def make_app(probes: Probes):
    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/metrics" and probes.registry is not None:
            return make_wsgi_app(probes.registry)(environ, start_response)
        if path in ("/livez", "/readyz"):
            ok, why = probes.live() if path == "/livez" else probes.ready()
            status = "200 OK" if ok else "503 Service Unavailable"
            start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
            return [f"{why}\n".encode()]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: try /metrics, /livez or /readyz\n"]

    return app


def serve(probes: Probes, host: str, port: int) -> WSGIServer:
    """Start serving on a daemon thread; ListenError naming the flag when the port is taken."""
    try:
        server = make_server(host, port, make_app(probes), _Server, handler_class=_QuietHandler)
    except OSError as e:
        raise ListenError(f"--http-port {port}: cannot listen ({e.strerror or e})") from None
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
