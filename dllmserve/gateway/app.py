"""The gateway's ASGI app: the OpenAI-compatible API over the scheduler's gRPC API.

Routes: POST /v1/completions, POST /v1/chat/completions (JSON, or server-sent events with
`stream: true`), GET /v1/models, GET /v1/models/{id}, GET /health, GET /metrics, and the
playground at /. Anything else, or a wrong method, is an OpenAI-shaped 404 / 405.

Every generation is a gRPC Generate call through one `AsyncClient` (generation.py), carrying
the caller's `Authorization` header and address as metadata, so the scheduler's token check,
validation and per-client queue cap answer HTTP callers exactly as gRPC ones.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from dllmserve.client import AsyncClient
from dllmserve.errors import echo
from dllmserve.gateway.access import AccessMiddleware
from dllmserve.gateway.errors import ApiError, from_rpc
from dllmserve.gateway.generation import Generation, error_response, metadata
from dllmserve.gateway.metrics import GatewayMetrics

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
        self.generation: Generation | None = None
        self.started = int(time.time())  # the models' `created`: when this gateway met them

    async def start(self) -> None:
        roots = Path(self.cfg.ca).read_bytes() if self.cfg.ca else None
        tls = self.cfg.tls or bool(roots)
        self.client = AsyncClient(
            self.cfg.targets, tls=tls, root_certificates=roots, max_reattach=self.cfg.retries
        )
        self.generation = Generation(self.client, self.metrics, self.cfg)
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
        return await self.generation.answer(request, chat=False)

    async def chat_completions(self, request: Request) -> Response:
        return await self.generation.answer(request, chat=True)

    async def models(self, request: Request) -> Response:
        try:
            data = await self._models(request)
        except ApiError as e:
            return error_response(request, e)
        return JSONResponse({"object": "list", "data": data})

    async def model(self, request: Request) -> Response:
        """One model (the SDK's `models.retrieve`), or a 404 in OpenAI's shape."""
        name = request.path_params["name"]
        try:
            found = [m for m in await self._models(request) if m["id"] == name]
            if not found:
                raise ApiError(
                    404,
                    f"model {name!r} is not served here",
                    type="not_found_error",
                    param="model",
                    code="model_not_found",
                )
        except ApiError as e:
            return error_response(request, e)
        return JSONResponse(found[0])

    async def _models(self, request: Request) -> list[dict]:
        try:
            info = await self.client.server_info(metadata=metadata(request))
        except grpc.RpcError as e:
            raise from_rpc(e, chat=False) from None
        return [
            {
                "id": m.name,
                "object": "model",
                "created": self.started,
                "owned_by": "dllmserve",
                "workers": m.workers,
                "max_model_len": m.max_model_len or None,
            }
            for m in info.models
        ]

    async def prometheus(self, request: Request) -> Response:
        body = generate_latest(self.metrics.registry)
        return Response(body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health(self, request: Request) -> Response:
        """200 while the scheduler's gRPC health check says SERVING (no token needed): it says
        NOT_SERVING while it cannot serve (no Redis, draining, no ready worker)."""
        stub = health_pb2_grpc.HealthStub(self.health_channel)
        try:
            resp = await stub.Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_TIMEOUT_S)
        except grpc.RpcError as e:
            request.state.error = f"scheduler health: {e.code().name}"
            return JSONResponse({"status": "unavailable", "detail": e.code().name}, 503)
        if resp.status != health_pb2.HealthCheckResponse.SERVING:
            name = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
            request.state.error = f"scheduler health: {name}"
            return JSONResponse({"status": "unavailable", "detail": name}, 503)
        return JSONResponse({"status": "ok"})


async def http_error(request: Request, exc: HTTPException) -> Response:
    """Starlette's own 404 / 405 (no such route, wrong method) in OpenAI's error shape."""
    path = echo(request.url.path, 100)
    allowed = _methods_of(request)
    if exc.status_code == 405 or (exc.status_code == 404 and allowed):
        err = ApiError(405, f"{request.method} is not allowed on {path}")
        exc.headers = {"Allow": ", ".join(sorted(allowed))} if allowed else exc.headers
    elif exc.status_code == 404:
        err = ApiError(404, f"no route {path}", type="not_found_error")
    else:
        err = ApiError(exc.status_code, str(exc.detail))
    response = error_response(request, err)
    response.headers.update(exc.headers or {})
    return response


def _methods_of(request: Request) -> set[str]:
    """The methods of an API route whose path matches (the static files' mount at / matches
    every path, so a wrong method on an API route reaches it and its 404)."""
    found: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, Route) and route.path_regex.match(request.url.path):
            found |= route.methods or set()
    return found - {"HEAD"}


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
        Route("/v1/models/{name:path}", gw.model, methods=["GET"]),
        Route("/health", gw.health, methods=["GET"]),
        Route("/metrics", gw.prometheus, methods=["GET"]),
        Mount("/", StaticFiles(directory=STATIC, html=True)),
    ]
    middleware = [Middleware(AccessMiddleware, metrics=gw.metrics)]
    if cfg.allowed_origins:  # a playground or app served from another origin
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=cfg.allowed_origins,
                allow_methods=["GET", "POST"],
                allow_headers=["*"],
                expose_headers=["X-Request-Id", "Retry-After"],
            )
        )
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error},
    )
    app.state.gateway = gw
    return app
