"""What both clients share: the targets in failover order, the credentials and token, one
channel per target (made on first use), and the retry schedule."""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

import grpc

from dllmserve.client.errors import status_details
from dllmserve.v1 import dllm_pb2_grpc

RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)


def retryable(err: grpc.RpcError) -> bool:
    """UNAVAILABLE from the transport or from a scheduler that cannot serve now (draining,
    Redis down): retry, or re-attach elsewhere. An UNAVAILABLE carrying the service's
    ErrorInfo is the request's own final status (no ready worker took it in time, its state
    was lost): retrying would only repeat it."""
    return err.code() in RETRYABLE and not status_details(err).final


def backoff_s(tries: int) -> float:
    return min(2.0, 0.1 * 2**tries)


class Channels:
    """`target` may be a list: the others are used to re-attach. Subclasses name the gRPC
    module whose channels they use (`grpc` or `grpc.aio`)."""

    channel_api: ModuleType = grpc

    def __init__(
        self,
        target: str | Sequence[str] = "localhost:50051",
        *,
        token: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        options: Sequence[tuple] = (),
        max_reattach: int = 10,
    ) -> None:
        self.targets = [target] if isinstance(target, str) else list(target)
        self._creds = (
            grpc.ssl_channel_credentials(root_certificates) if tls or root_certificates else None
        )
        self._options = list(options)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._channels: dict = {}
        self._current = 0
        self.max_reattach = max_reattach

    def _stub(self) -> dllm_pb2_grpc.DllmServiceStub:
        t = self.targets[self._current]
        if t not in self._channels:
            api = self.channel_api
            self._channels[t] = (
                api.secure_channel(t, self._creds, options=self._options)
                if self._creds
                else api.insecure_channel(t, options=self._options)
            )
        return dllm_pb2_grpc.DllmServiceStub(self._channels[t])
