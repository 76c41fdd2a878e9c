"""Run the gateway app with uvicorn on a socket bound before it starts (so port 0 works and the
ready line can print the real URL)."""

from __future__ import annotations

import logging
import socket

import uvicorn

from dllmserve.errors import ListenError
from dllmserve.gateway.app import GatewayConfig, build_app
from dllmserve.logs import ready

log = logging.getLogger(__name__)
READY_LINE = "DLLMSERVE_GATEWAY_READY"


def bind(listen: str) -> socket.socket:
    """A listening socket for HOST:PORT; an error naming --listen when it cannot be had."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ListenError(f"--listen: must be HOST:PORT, got {listen!r}")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as e:
        sock.close()
        raise ListenError(f"--listen {listen}: cannot listen ({e.strerror or e})") from None
    sock.listen(2048)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = "localhost" if host in ("0.0.0.0", "::", "127.0.0.1") else host
    return f"http://{shown}:{port}"


def run(cfg: GatewayConfig) -> None:
    sock = bind(cfg.listen)
    config = uvicorn.Config(
        build_app(cfg),
        log_config=None,  # the process' logging (dllmserve.logs) formats uvicorn's lines too
        access_log=False,  # the gateway logs one structured line per request itself
        timeout_graceful_shutdown=30,
    )
    server = uvicorn.Server(config)
    log.info("gateway on %s -> schedulers %s", url_of(sock), ",".join(cfg.targets))
    ready(READY_LINE, url=url_of(sock), port=sock.getsockname()[1])
    server.run(sockets=[sock])
