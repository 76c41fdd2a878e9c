"""The gateway's ASGI app: the OpenAI-compatible API over the scheduler's gRPC API.

Routes: POST /v1/completions, POST /v1/chat/completions (JSON, or server-sent events with
`stream: true`), GET /v1/models, GET /health, GET /metrics, and the playground at /.

Every generation is a gRPC Generate call through one `AsyncClient`, carrying the caller's
`Authorization` header as metadata, so the scheduler's token check and validation answer
HTTP callers exactly as gRPC ones. A request is answered only after the scheduler accepted
each of its generations: a refusal (bad field, unknown model, full queue, auth) is a plain
HTTP error even for a stream. Generations are sent with `cancel_on_disconnect`, so an HTTP
client that goes away frees its worker's memory at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from dllmserve.client import AsyncClient, Completed, Event, StepUpdate
from dllmserve.gateway import responses as out
from dllmserve.gateway.errors import ApiError, from_rpc
from dllmserve.gateway.metrics import GatewayMetrics, MetricsMiddleware
from dllmserve.gateway.requests import Plan, plan
from dllmserve.gateway.stop import StopText, cut

STATIC = Path(__file__).parent / "static"
HEALTH_TIMEOUT_S = 3.0


@dataclass
class GatewayConfig:
    targets: list[str] = field(default_factory=lambda: ["localhost:50051"])  # schedulers
    listen: str = "0.0.0.0:8000"
    tls: bool = False  # TLS to the schedulers
    ca: str = ""  # PEM of their CA (implies tls)
    max_body_bytes: int = 4 * 1024 * 1024  # the scheduler's default gRPC message limit
    retries: int = 10  # retries / re-attaches of a call whose scheduler is unavailable
    rpc_timeout_s: float = 600.0  # deadline of each generation's gRPC call
    header_timeout_s: float = 10.0  # a connection's request headers must arrive within this
    body_timeout_s: float = 30.0  # a request's body must arrive within this
    max_connections: int = 1000  # open HTTP connections; over it, new requests get 503
    allowed_origins: list[str] = field(default_factory=list)  # CORS; none by default


class Gateway:
    def __init__(self, cfg: GatewayConfig) -> None:
        self.cfg = cfg
        self.metrics = GatewayMetrics()
        self.client: AsyncClient | None = None
        self.health_channel: grpc.aio.Channel | None = None

    async def start(self) -> None:
        roots = Path(self.cfg.ca).read_bytes() if self.cfg.ca else None
        tls = self.cfg.tls or bool(roots)
        self.client = AsyncClient(
            self.cfg.targets, tls=tls, root_certificates=roots, max_reattach=self.cfg.retries
        )
        target = self.cfg.targets[0]
        self.health_channel = (
            grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(roots))
            if tls
            else grpc.aio.insecure_channel(target)
        )

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.close()
        if self.health_channel is not None:
            await self.health_channel.close()

    # --- routes ----------------------------------------------------------------------------

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, chat=False)

    async def chat_completions(self, request: Request) -> Response:
        return await self._generate(request, chat=True)

    async def models(self, request: Request) -> Response:
        try:
            info = await self.client.server_info(metadata=_metadata(request))
        except ApiError as e:
            return _error(e)
        except grpc.RpcError as e:
            return _error(from_rpc(e, chat=False))
        data = [
            {"id": m.name, "object": "model", "created": 0, "owned_by": "dllmserve",
             "workers": m.workers}
            for m in info.models
        ]  # fmt: skip
        return JSONResponse({"object": "list", "data": data})

    async def prometheus(self, request: Request) -> Response:
        body = generate_latest(self.metrics.registry)
        return Response(body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health(self, request: Request) -> Response:
        """200 while the scheduler's gRPC health check says SERVING (no token needed)."""
        stub = health_pb2_grpc.HealthStub(self.health_channel)
        try:
            resp = await stub.Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_TIMEOUT_S)
        except grpc.RpcError as e:
            return JSONResponse({"status": "unavailable", "detail": e.code().name}, 503)
        if resp.status != health_pb2.HealthCheckResponse.SERVING:
            name = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
            return JSONResponse({"status": "unavailable", "detail": name}, 503)
        return JSONResponse({"status": "ok"})

    # --- generation ------------------------------------------------------------------------

    async def _generate(self, request: Request, chat: bool) -> Response:
        try:
            p = plan(await _json_body(request, self.cfg.max_body_bytes), chat)
            streams = await self._open(p, _metadata(request))
        except ApiError as e:
            return _error(e)
        if p.stream:
            return StreamingResponse(
                self._stream(p, streams, time.perf_counter()),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Request-Id": p.id},
            )
        try:
            dones = await asyncio.gather(*(_completed(s) for s in streams))
        except grpc.RpcError as e:
            return _error(from_rpc(e, chat))
        finally:
            for s in streams:
                await s.aclose()
        texts, reasons = [], []
        for d in dones:
            text, stopped = cut(d.text, p.stop)
            texts.append(text)
            reasons.append(out.finish_reason(d, stopped))
            self.metrics.generations.labels(p.model, reasons[-1]).inc()
        body = out.completion(p, dones, texts, reasons, p.n)
        return JSONResponse(body, headers={"X-Request-Id": p.id})

    async def _open(self, p: Plan, md: tuple) -> list[AsyncIterator[Event]]:
        """Start every generation and wait for each one's Accepted (or its refusal)."""
        streams = [self.client.stream(r, metadata=md) for r in p.requests]
        firsts = await asyncio.gather(*(s.__anext__() for s in streams), return_exceptions=True)
        failed = next((f for f in firsts if isinstance(f, BaseException)), None)
        if failed is None:
            return streams
        for s in streams:
            await s.aclose()
        if isinstance(failed, grpc.RpcError):
            raise from_rpc(failed, p.chat)
        if isinstance(failed, StopAsyncIteration):
            raise ApiError(502, "the scheduler ended the stream at once", type="server_error")
        raise failed

    async def _stream(self, p: Plan, streams: list, t0: float) -> AsyncIterator[bytes]:
        """Merge the choices' streams into OpenAI chunks (denoise mode: one per step)."""
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i: int, s) -> None:
            try:
                async for ev in s:
                    await queue.put((i, ev))
            except grpc.RpcError as e:
                await queue.put((i, e))
            finally:
                await queue.put((i, None))

        tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
        texts = [StopText(p.stop) for _ in streams]
        dones: list[Completed | None] = [None] * len(streams)
        ended = [False] * len(streams)
        open_ = len(streams)
        first_token = True
        self.metrics.open_streams.inc()
        try:
            if p.chat:
                for i in range(len(streams)):
                    yield out.sse(out.chunk(p, i, "", role=True))
            while open_:
                i, ev = await queue.get()
                if ev is None:
                    open_ -= 1
                    continue
                if isinstance(ev, grpc.RpcError):
                    yield out.sse(from_rpc(ev, p.chat).body())
                    break
                if isinstance(ev, StepUpdate) and not ended[i]:
                    text = texts[i].feed(ev.text_delta)
                    if text and first_token:
                        first_token = False
                        self.metrics.first_token.labels(p.model).observe(time.perf_counter() - t0)
                    if text or p.denoise:
                        yield out.sse(out.chunk(p, i, text, step=ev if p.denoise else None))
                    if texts[i].stopped:  # a stop string: this choice is done for the client
                        ended[i] = True
                        yield out.sse(out.chunk(p, i, finish="stop"))
                        self.metrics.generations.labels(p.model, "stop").inc()
                elif isinstance(ev, Completed):
                    dones[i] = ev
                    if not ended[i]:
                        ended[i] = True
                        rest = texts[i].flush()
                        reason = out.finish_reason(ev, texts[i].stopped)
                        yield out.sse(out.chunk(p, i, rest, finish=reason))
                        self.metrics.generations.labels(p.model, reason).inc()
            else:
                if p.include_usage and all(d is not None for d in dones):
                    yield out.sse(out.usage_chunk(p, dones, p.n))
            yield out.DONE
        finally:
            self.metrics.open_streams.dec()
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            for s in streams:
                with contextlib.suppress(Exception):
                    await s.aclose()


async def _completed(stream) -> Completed:
    async for ev in stream:
        if isinstance(ev, Completed):
            return ev
    raise ApiError(502, "the stream ended without a result", type="server_error")


def _metadata(request: Request) -> tuple:
    """The caller's Authorization header, forwarded to the scheduler as gRPC metadata."""
    auth = request.headers.get("authorization", "")
    if not auth:
        return ()
    if not auth.isascii() or not auth.isprintable():
        raise ApiError(401, "the Authorization header must be printable ASCII",
                       type="authentication_error")  # fmt: skip
    return (("authorization", auth),)


async def _json_body(request: Request, limit: int) -> object:
    size = 0
    chunks = []
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise ApiError(413, f"body: must be at most {limit} bytes", param="body")
        chunks.append(part)
    try:
        return json.loads(b"".join(chunks) or b"null")
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"body: not valid JSON ({e})", param="body") from None


def _error(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers())


def build_app(cfg: GatewayConfig) -> Starlette:
    gw = Gateway(cfg)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await gw.start()
        try:
            yield
        finally:
            await gw.stop()

    routes = [
        Route("/v1/completions", gw.completions, methods=["POST"]),
        Route("/v1/chat/completions", gw.chat_completions, methods=["POST"]),
        Route("/v1/models", gw.models, methods=["GET"]),
        Route("/health", gw.health, methods=["GET"]),
        Route("/metrics", gw.prometheus, methods=["GET"]),
        Mount("/", StaticFiles(directory=STATIC, html=True)),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(MetricsMiddleware, metrics=gw.metrics)
    app.state.gateway = gw
    return app
