"""Connections a slow or hostile client cannot hold: a header deadline, and quiet accept errors.

uvicorn bounds idle keep-alive connections and (with `limit_concurrency`) answers 503 over a
connection limit, but a client that sends its headers a byte at a time holds its connection
and file descriptor forever. `protocol(timeout)` is uvicorn's h11 protocol with a deadline on
each request's headers, counted from the connection's start (or the next request's first
byte): past it the connection is closed. asyncio logs a failed accept(), with a traceback,
for every connection the listen backlog offers while the process is out of file descriptors
(thousands of lines a second); `quiet_accept_errors` lets one line through per interval, with
the count of the ones held back.
"""

from __future__ import annotations

import asyncio
import logging
import time

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)
ACCEPT_ERROR = "socket.accept() out of system resource"
ACCEPT_LOG_INTERVAL_S = 10.0


def protocol(header_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing a connection whose request headers take too long."""

    class HeaderDeadline(H11Protocol):
        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._header_timer = None
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:  # part of a request's headers, or none yet
                self._arm()
            else:
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def on_response_complete(self) -> None:
            super().on_response_complete()  # an idle keep-alive is uvicorn's to close
            self._disarm()

        def _expire(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadline


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Route `loop`'s accept() errors through a limiter: one line per interval, no traceback."""
    last = {"at": -ACCEPT_LOG_INTERVAL_S, "held": 0}
    default = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        if context.get("message") != ACCEPT_ERROR:
            if default is not None:
                default(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        now = time.monotonic()
        if now - last["at"] < ACCEPT_LOG_INTERVAL_S:
            last["held"] += 1
            return
        exc = context.get("exception")
        log.error(
            "cannot accept connections: %s (%d more in the last %.0f s); raise the file "
            "limit (ulimit -n) or lower --max-connections",
            getattr(exc, "strerror", None) or exc,
            last["held"],
            ACCEPT_LOG_INTERVAL_S,
        )
        last["at"], last["held"] = now, 0

    loop.set_exception_handler(handler)
