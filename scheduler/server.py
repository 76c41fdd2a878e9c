"""The scheduler process: gRPC server (DllmService, health, reflection), relay hub, dispatcher.

Health (grpc.health.v1, for "" and the DllmService) says SERVING only while Redis answers, the
scheduler is not draining and at least one worker is `ready`: a load balancer sends nothing to a
scheduler that could only queue. The service name `liveness` says SERVING while the process
runs (a liveness probe must not restart a scheduler that merely waits for workers).

The gRPC port is bound exclusively (gRPC sets SO_REUSEPORT by default, which let a second
scheduler share the port): a taken port is one line, `ListenError`, and a non-zero exit.

SIGTERM drains: health turns NOT_SERVING (load balancers stop sending), new Generate calls get
UNAVAILABLE, the dispatcher lease is released so another replica takes over at once, and open
streams get `drain_grace_s` to finish. Requests themselves live in Redis and keep running on
the workers; a client whose stream is cut re-attaches through another replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import uuid

import grpc
import grpc.aio
import redis.exceptions
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from dllmserve.broker.redis_link import Backoff, connect
from dllmserve.errors import ListenError
from dllmserve.logs import ready
from dllmserve.scheduler import reflection
from dllmserve.scheduler.auth import BearerTokenInterceptor
from dllmserve.scheduler.config import SchedulerConfig
from dllmserve.scheduler.dispatcher import Dispatcher
from dllmserve.scheduler.registration import add_service
from dllmserve.scheduler.relay import ResultHub
from dllmserve.scheduler.service import DllmServicer
from dllmserve.v1 import dllm_pb2

log = logging.getLogger(__name__)
SERVICE_NAME = dllm_pb2.DESCRIPTOR.services_by_name["DllmService"].full_name
READY_LINE = "DLLMSERVE_SCHEDULER_READY"
LIVENESS = "liveness"  # the health service name a liveness probe asks about


class Scheduler:
    def __init__(self, cfg: SchedulerConfig) -> None:
        self.cfg = cfg
        self.id = cfg.scheduler_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.redis = connect(cfg.redis_url, asyncio=True, health_check_interval=10)
        self.hub = ResultHub(self.redis, hub_id=self.id)
        self.dispatcher = Dispatcher(self.redis, self.id, cfg)
        self.servicer = DllmServicer(self.redis, self.hub, self.dispatcher, cfg, self.id)
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self._tasks: list[asyncio.Task] = []
        self._stopped = asyncio.Event()

    async def start(self) -> int:
        tokens = self.cfg.auth_tokens
        interceptors = [BearerTokenInterceptor(tokens)] if tokens else []
        opts = [
            ("grpc.max_receive_message_length", self.cfg.max_request_bytes),
            ("grpc.max_send_message_length", self.cfg.max_message_bytes),
            ("grpc.so_reuseport", 0),  # a second scheduler on this port fails instead
        ]
        self.server = grpc.aio.server(interceptors=interceptors, options=opts)
        add_service(self.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable(self.server, (SERVICE_NAME, health.SERVICE_NAME))
        check_free(self.cfg.listen)  # before gRPC tries: its failure is a C-core log line
        try:
            if self.cfg.tls_cert and self.cfg.tls_key:
                with open(self.cfg.tls_key, "rb") as k, open(self.cfg.tls_cert, "rb") as c:
                    creds = grpc.ssl_server_credentials([(k.read(), c.read())])
                self.port = self.server.add_secure_port(self.cfg.listen, creds)
            else:
                self.port = self.server.add_insecure_port(self.cfg.listen)
        except RuntimeError as e:  # taken between the check and the bind
            raise ListenError(f"--listen {self.cfg.listen}: cannot listen ({e})") from None
        await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        await self.server.start()
        self._tasks.append(asyncio.create_task(self.hub.run()))
        if self.cfg.dispatch:
            self._tasks.append(asyncio.create_task(self.dispatcher.run()))
        self._tasks.append(asyncio.create_task(self._watch_redis()))
        return self.port

    async def _watch_redis(self) -> None:
        """Health follows Redis and the workers: without Redis the scheduler can neither queue
        nor relay, without a ready worker nothing it queues runs."""
        serving, backoff = None, Backoff(log, "scheduler")
        while True:
            wait, why = 1.0, ""
            try:
                workers = await asyncio.wait_for(self.dispatcher.live_workers(), timeout=2.0)
                backoff.ok()
                why = "" if workers else "no worker is ready"
            except (redis.exceptions.RedisError, OSError, asyncio.TimeoutError) as e:
                wait, why = backoff.failed(e), "redis is unreachable"
            why = "draining" if self.servicer.draining else why
            if (not why) != serving:
                serving = not why
                if why:
                    log.warning("health: NOT_SERVING (%s)", why)
                else:
                    log.info("health: SERVING")
                st = health_pb2.HealthCheckResponse
                await self.health.set("", st.SERVING if serving else st.NOT_SERVING)
                await self.health.set(SERVICE_NAME, st.SERVING if serving else st.NOT_SERVING)
            await asyncio.sleep(wait)

    async def drain(self) -> None:
        if self.servicer.draining:
            return
        log.info("draining (grace %.0fs)", self.cfg.drain_grace_s)
        self.servicer.draining = True
        await self.health.enter_graceful_shutdown()
        await self.dispatcher.stop()
        if self.server is not None:
            await self.server.stop(self.cfg.drain_grace_s)
        await self.close()

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        if self.server is not None:
            await self.server.stop(0)
        await self.hub.close()
        await self.redis.aclose()
        self._stopped.set()

    async def wait(self) -> None:
        await self._stopped.wait()


def check_free(listen: str) -> None:
    """ListenError (one line) when something already listens at `listen` (HOST:PORT)."""
    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        raise ListenError(f"--listen: must be HOST:PORT, got {listen!r}")
    if int(port) == 0:
        return
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(
            host or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as e:
        raise ListenError(f"--listen {listen}: {e.strerror}") from None
    for family, kind, proto, _name, addr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds
            try:
                sock.bind(addr)
            except OSError as e:
                raise ListenError(f"--listen {listen}: cannot listen ({e.strerror or e})") from None


async def run(cfg: SchedulerConfig) -> None:
    """Run until SIGTERM/SIGINT, then drain."""
    sched = Scheduler(cfg)
    if cfg.metrics_port:
        sched.servicer.metrics.serve(cfg.metrics_port, cfg.metrics_host)
        log.info("scheduler metrics on port %d", cfg.metrics_port)
    try:
        port = await sched.start()
    except ListenError:
        await sched.redis.aclose()
        raise
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(sched.drain()))
    log.info("scheduler %s listening on port %d", sched.id, port)
    ready(READY_LINE, port=port, id=sched.id)
    sys.stdout.flush()
    await sched.wait()
