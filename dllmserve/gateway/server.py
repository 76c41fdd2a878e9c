"""Run the gateway app with uvicorn on a socket bound before it starts (so port 0 works and the
ready line can print the real URL), with the connection limits of connections.py."""

from __future__ import annotations

import asyncio
import logging
import socket

import uvicorn

from dllmserve.errors import ListenError
from dllmserve.gateway.app import GatewayConfig, build_app
from dllmserve.gateway.connections import protocol, quiet_accept_errors
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


class _Server(uvicorn.Server):
    async def serve(self, sockets=None) -> None:
        quiet_accept_errors(asyncio.get_running_loop())
        await super().serve(sockets)


def run(cfg: GatewayConfig) -> None:
    sock = bind(cfg.listen)
    config = uvicorn.Config(
        build_app(cfg),
        http=protocol(cfg.header_timeout_s),
        limit_concurrency=cfg.max_connections + 1,  # uvicorn counts the new one too
        log_config=None,  # the process' logging (dllmserve.logs) formats uvicorn's lines too
        access_log=False,  # the gateway logs one structured line per request itself
        timeout_graceful_shutdown=30,
    )
    server = _Server(config)
    log.info("gateway on %s -> schedulers %s", url_of(sock), ",".join(cfg.targets))
    ready(READY_LINE, url=url_of(sock), port=sock.getsockname()[1])
    server.run(sockets=[sock])
