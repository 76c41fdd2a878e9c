"""The scheduler process: gRPC server (DllmService, health, reflection), relay hub, dispatcher.

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
import redis.asyncio as aioredis
import redis.exceptions
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from dllmserve.logs import ready
from dllmserve.scheduler import reflection
from dllmserve.scheduler.auth import BearerTokenInterceptor
from dllmserve.scheduler.config import SchedulerConfig
from dllmserve.scheduler.dispatcher import Dispatcher, DispatcherConfig
from dllmserve.scheduler.relay import ResultHub
from dllmserve.scheduler.service import DllmServicer
from dllmserve.scheduler.wire import add_service
from dllmserve.v1 import dllm_pb2

log = logging.getLogger(__name__)
SERVICE_NAME = dllm_pb2.DESCRIPTOR.services_by_name["DllmService"].full_name
READY_LINE = "DLLMSERVE_SCHEDULER_READY"


class Scheduler:
    def __init__(self, cfg: SchedulerConfig) -> None:
        self.cfg = cfg
        self.id = cfg.scheduler_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.redis = aioredis.from_url(cfg.redis_url, health_check_interval=10)
        self.hub = ResultHub(self.redis, hub_id=self.id)
        self.dispatcher = Dispatcher(
            self.redis,
            self.id,
            DispatcherConfig(
                lease_ttl_ms=cfg.lease_ttl_ms,
                max_batch=cfg.max_batch,
                max_attempts=cfg.max_attempts,
                result_ttl_s=cfg.result_ttl_s,
            ),
        )
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
        ]
        self.server = grpc.aio.server(interceptors=interceptors, options=opts)
        add_service(self.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable(self.server, (SERVICE_NAME, health.SERVICE_NAME))
        if self.cfg.tls_cert and self.cfg.tls_key:
            with open(self.cfg.tls_key, "rb") as k, open(self.cfg.tls_cert, "rb") as c:
                creds = grpc.ssl_server_credentials([(k.read(), c.read())])
            self.port = self.server.add_secure_port(self.cfg.listen, creds)
        else:
            self.port = self.server.add_insecure_port(self.cfg.listen)
        await self.server.start()
        self._tasks.append(asyncio.create_task(self.hub.run()))
        if self.cfg.dispatch:
            self._tasks.append(asyncio.create_task(self.dispatcher.run()))
        self._tasks.append(asyncio.create_task(self._watch_redis()))
        return self.port

    async def _watch_redis(self) -> None:
        """Health follows Redis: without it the scheduler can neither queue nor relay."""
        serving = None
        while True:
            try:
                ok = bool(await asyncio.wait_for(self.redis.ping(), timeout=2.0))
            except (redis.exceptions.RedisError, OSError, asyncio.TimeoutError):
                ok = False
            ok = ok and not self.servicer.draining
            if ok != serving:
                serving = ok
                st = (
                    health_pb2.HealthCheckResponse.SERVING
                    if ok
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                await self.health.set("", st)
                await self.health.set(SERVICE_NAME, st)
            await asyncio.sleep(1.0)

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


async def run(cfg: SchedulerConfig) -> None:
    """Run until SIGTERM/SIGINT, then drain."""
    sched = Scheduler(cfg)
    if cfg.metrics_port:
        sched.servicer.metrics.serve(cfg.metrics_port, cfg.metrics_host)
        log.info("scheduler metrics on port %d", cfg.metrics_port)
    port = await sched.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(sched.drain()))
    log.info("scheduler %s listening on port %d", sched.id, port)
    ready(READY_LINE, port=port, id=sched.id)
    sys.stdout.flush()
    await sched.wait()
