"""The synchronous client."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import grpc

from dllmserve.client.channels import Channels, backoff_s, retryable
from dllmserve.client.errors import from_rpc_error
from dllmserve.client.request import Resume, build_request
from dllmserve.client.types import Completed, Event, ServerInfo, event_from_pb, server_info_from_pb
from dllmserve.v1 import dllm_pb2 as pb


class Client(Channels):
    """Synchronous client. `target` may be a list: the others are used to re-attach."""

    def generate(
        self,
        prompt: str | None = None,
        *,
        timeout: float | None = None,
        reattach: bool = True,
        **kwargs,
    ) -> Iterator[Event]:
        """Stream the events of one generation: Accepted, StepUpdate..., Completed (see
        `build_request` for the arguments). Errors raise a `ServiceError` subclass."""
        req = build_request(prompt, **kwargs)
        if not req.request_id:
            req.request_id = uuid.uuid4().hex
        yield from self.stream(req, timeout=timeout, reattach=reattach)

    def stream(
        self, req: pb.GenerateRequest, *, timeout: float | None = None, reattach: bool = True
    ) -> Iterator[Event]:
        """`generate` for a ready-made GenerateRequest."""
        resume = Resume(req.request_id)
        deadline = time.monotonic() + timeout if timeout is not None else None
        call = self._stub().Generate(req, timeout=timeout, metadata=self._metadata)
        tries = 0
        while True:
            try:
                for ev in call:
                    if resume.see(ev):
                        yield event_from_pb(ev)
                return
            except GeneratorExit:
                call.cancel()  # the caller stopped reading: end the RPC now, not at GC time
                raise
            except grpc.RpcError as e:
                if not reattach or not retryable(e) or tries >= self.max_reattach:
                    raise from_rpc_error(e) from e
                tries += 1
                time.sleep(backoff_s(tries))
                self._current = (self._current + 1) % len(self.targets)
                left = None if deadline is None else max(0.001, deadline - time.monotonic())
                if not resume.accepted:  # never queued, or we never heard: Generate is idempotent
                    call = self._stub().Generate(req, timeout=left, metadata=self._metadata)
                else:
                    call = self._stub().Attach(
                        resume.attach_request(req.stream_options),
                        timeout=left,
                        metadata=self._metadata,
                    )

    def generate_text(self, prompt: str | None = None, **kwargs) -> Completed:
        """Run one generation to the end; returns its Completed event."""
        last = None
        for ev in self.generate(prompt, **kwargs):
            if isinstance(ev, Completed):
                last = ev
        if last is None:
            raise RuntimeError("the stream ended without a Completed event")
        return last

    def attach(
        self,
        request_id: str,
        after_step: int = 0,
        attempt: int = 0,
        *,
        stream_options: pb.StreamOptions | None = None,
        timeout: float | None = None,
    ) -> Iterator[Event]:
        """Follow a request from after `after_step` of `attempt` (0: from the start)."""
        req = pb.AttachRequest(request_id=request_id, after_step=after_step, attempt=attempt)
        if stream_options is not None:
            req.stream_options.CopyFrom(stream_options)
        call = self._stub().Attach(req, timeout=timeout, metadata=self._metadata)
        try:
            for ev in call:
                yield event_from_pb(ev)
        except GeneratorExit:
            call.cancel()
            raise
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e

    def cancel(self, request_id: str, timeout: float | None = 10.0) -> str:
        """The request's status after the call: cancelled, cancelling, or its terminal one."""
        try:
            resp = self._stub().Cancel(
                pb.CancelRequest(request_id=request_id), timeout=timeout, metadata=self._metadata
            )
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e
        return resp.status

    def server_info(self, timeout: float | None = 10.0) -> ServerInfo:
        try:
            info = self._stub().GetServerInfo(
                pb.GetServerInfoRequest(), timeout=timeout, metadata=self._metadata
            )
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e
        return server_info_from_pb(info)

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()
        self._channels.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
