"""Optional bearer-token authentication for every RPC except health checks.

Health is left open so that Kubernetes' gRPC probes (which send no metadata) keep working.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

import grpc
import grpc.aio

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str) -> None:
        self._token = token.encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if details.method.startswith(OPEN_PREFIXES) or self._authorized(details):
            return await continuation(details)
        handler = await continuation(details)
        return _deny(handler)

    def _authorized(self, details: grpc.HandlerCallDetails) -> bool:
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                v = value.encode() if isinstance(value, str) else value
                scheme, _, tok = v.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(tok.strip(), self._token)
        return False


def _deny(handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler:
    msg = "missing or invalid bearer token (metadata 'authorization: Bearer <token>')"

    async def unary(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, msg)

    async def stream(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, msg)
        yield  # pragma: no cover - makes this an async generator

    if handler is not None and handler.response_streaming and not handler.request_streaming:
        return grpc.unary_stream_rpc_method_handler(
            stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return grpc.unary_unary_rpc_method_handler(
        unary,
        request_deserializer=handler.request_deserializer if handler else None,
        response_serializer=handler.response_serializer if handler else None,
    )
