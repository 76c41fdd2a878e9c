"""The asyncio client: the methods of `Client`, as async iterators and coroutines."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence

import grpc
import grpc.aio

from dllmserve.client.channels import Channels, backoff_s, retryable
from dllmserve.client.errors import from_rpc_error
from dllmserve.client.request import Resume, build_request
from dllmserve.client.types import Completed, Event, ServerInfo, event_from_pb, server_info_from_pb
from dllmserve.v1 import dllm_pb2 as pb


class AsyncClient(Channels):
    """asyncio client with the same methods as `Client`."""

    channel_api = grpc.aio

    async def generate(
        self,
        prompt: str | None = None,
        *,
        timeout: float | None = None,
        reattach: bool = True,
        **kwargs,
    ) -> AsyncIterator[Event]:
        """Stream the events of one generation: Accepted, StepUpdate..., Completed."""
        req = build_request(prompt, **kwargs)
        if not req.request_id:
            req.request_id = uuid.uuid4().hex
        async for ev in self.stream(req, timeout=timeout, reattach=reattach):
            yield ev

    async def stream(
        self,
        req: pb.GenerateRequest,
        *,
        timeout: float | None = None,
        reattach: bool = True,
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> AsyncIterator[Event]:
        """`generate` for a ready-made GenerateRequest. `metadata` replaces the client's own for
        this call (a gateway forwarding each caller's token over one channel)."""
        md = self._metadata if metadata is None else tuple(metadata)
        resume = Resume(req.request_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout is not None else None
        call = self._stub().Generate(req, timeout=timeout, metadata=md)
        tries = 0
        while True:
            try:
                async for ev in call:
                    if resume.see(ev):
                        yield event_from_pb(ev)
                return
            except grpc.aio.AioRpcError as e:
                if not reattach or not retryable(e) or tries >= self.max_reattach:
                    raise from_rpc_error(e) from e
                tries += 1
                await asyncio.sleep(backoff_s(tries))
                self._current = (self._current + 1) % len(self.targets)
                left = None if deadline is None else max(0.001, deadline - loop.time())
                if not resume.accepted:
                    call = self._stub().Generate(req, timeout=left, metadata=md)
                else:
                    call = self._stub().Attach(
                        resume.attach_request(req.stream_options), timeout=left, metadata=md
                    )

    async def generate_text(self, prompt: str | None = None, **kwargs) -> Completed:
        last = None
        async for ev in self.generate(prompt, **kwargs):
            if isinstance(ev, Completed):
                last = ev
        if last is None:
            raise RuntimeError("the stream ended without a Completed event")
        return last

    async def attach(
        self,
        request_id: str,
        after_step: int = 0,
        attempt: int = 0,
        *,
        stream_options: pb.StreamOptions | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[Event]:
        req = pb.AttachRequest(request_id=request_id, after_step=after_step, attempt=attempt)
        if stream_options is not None:
            req.stream_options.CopyFrom(stream_options)
        try:
            async for ev in self._stub().Attach(req, timeout=timeout, metadata=self._metadata):
                yield event_from_pb(ev)
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from e

    async def cancel(self, request_id: str, timeout: float | None = 10.0) -> str:
        try:
            resp = await self._stub().Cancel(
                pb.CancelRequest(request_id=request_id), timeout=timeout, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from e
        return resp.status

    async def server_info(
        self, timeout: float | None = 10.0, metadata: Sequence[tuple[str, str]] | None = None
    ) -> ServerInfo:
        md = self._metadata if metadata is None else tuple(metadata)
        try:
            info = await self._stub().GetServerInfo(
                pb.GetServerInfoRequest(), timeout=timeout, metadata=md
            )
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from e
        return server_info_from_pb(info)

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
