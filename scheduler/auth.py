"""Optional bearer-token authentication for every RPC except health checks, and who a call is.

Health is left open so that Kubernetes' gRPC probes (which send no metadata) keep working.
Several tokens may be configured, one per tenant: a request belongs to the tenant whose token
created it, and Redis stores only a hash of that token (`client_of`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import grpc
import grpc.aio

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
CLIENT_HEADER = "x-dllmserve-client"  # who a front end calls for (the per-client queue cap)


def load_tokens(tokens: str = "", token_file: str = "") -> tuple[str, ...]:
    """Tokens from a comma-separated list and from a file (one per line; blank lines and
    lines starting with # are skipped)."""
    found = [t.strip() for t in tokens.split(",")]
    if token_file:
        for line in Path(token_file).read_text().splitlines():
            if not line.strip().startswith("#"):
                found.append(line.strip())
    out = tuple(dict.fromkeys(t for t in found if t))
    bad = [t for t in out if any(c.isspace() for c in t)]
    if bad:
        raise ValueError("an auth token may not contain whitespace")
    return out


def bearer_token(metadata) -> bytes | None:
    """The token of an `authorization: Bearer <token>` entry, or None."""
    for key, value in metadata or ():
        if key == "authorization":
            v = value.encode() if isinstance(value, str) else value
            scheme, _, tok = v.partition(b" ")
            return tok.strip() if scheme.lower() == b"bearer" else None
    return None


def client_of(context: grpc.aio.ServicerContext, authenticated: bool) -> str:
    """Who sent a call: with auth on, the tenant (a hash of its token, never the token); else
    the peer's address without the port (clients behind one proxy count as one)."""
    if authenticated:
        token = bearer_token(context.invocation_metadata()) or b""
        return "t:" + hashlib.sha256(token).hexdigest()[:32]
    peer = context.peer() or ""
    return "ip:" + (peer.rpartition(":")[0] or peer)


def quota_of(
    context: grpc.aio.ServicerContext, client: str, authenticated: bool, trust_header: bool
) -> str:
    """The per-client queue bucket of a call. A front end (the HTTP gateway) names the user it
    calls for in `x-dllmserve-client`; the header is honoured from an authenticated caller
    (within its tenant's name) or, with auth off, only when the operator trusts every caller
    (`--trust-client-header`). Otherwise the bucket is the client itself."""
    if not (authenticated or trust_header):
        return client
    for key, value in context.invocation_metadata() or ():
        if key == CLIENT_HEADER and value:
            v = value.encode() if isinstance(value, str) else value
            return f"{client}|c:{hashlib.sha256(v).hexdigest()[:32]}"
    return client


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: Sequence[str]) -> None:
        if not tokens:
            raise ValueError("at least one token is needed")
        self._tokens = [t.encode() for t in tokens]

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
        tok = bearer_token(details.invocation_metadata)
        if tok is None:
            return False
        # every token is compared (in constant time each), so timing tells nothing of which
        return sum(hmac.compare_digest(tok, t) for t in self._tokens) > 0


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
