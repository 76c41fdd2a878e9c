"""Python client of the dLLM-Serve gRPC API, sync (`Client`) and asyncio (`AsyncClient`).

    from dllmserve.client import Client
    with Client("localhost:50051") as c:
        for ev in c.generate("Why is the sky blue?", sampling_params={"gen_length": 64}):
            ...
        print(c.generate_text("Hi", sampling_params={"gen_length": 32}).text)

`generate` survives the loss of a scheduler: the request id is chosen on the client, and when
the stream breaks with UNAVAILABLE the client re-attaches (through the next target, when more
than one is given) after the last step it received, so the caller sees one unbroken stream.
A StepUpdate whose `attempt` differs from the previous one restarts the canvas (the request was
re-run on another worker); `Canvas` applies updates with that rule.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence

import grpc
import grpc.aio

from dllmserve.v1 import dllm_pb2 as pb
from dllmserve.v1 import dllm_pb2_grpc

STREAM_MODES = {
    "every_step": pb.STREAM_MODE_EVERY_STEP,
    "every_k_steps": pb.STREAM_MODE_EVERY_K_STEPS,
    "blocks": pb.STREAM_MODE_BLOCKS,
    "final_only": pb.STREAM_MODE_FINAL_ONLY,
}
RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)


def _params_msg(msg_type, value):
    if value is None:
        return None
    if isinstance(value, msg_type):
        return value
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    msg = msg_type()
    for k, v in dict(value).items():
        if v is None:
            continue
        if k == "layer_ratios":
            msg.layer_ratios.extend(v)
        else:
            setattr(msg, k, v)
    return msg


def build_request(
    prompt: str | None = None,
    *,
    messages: Sequence[dict] | None = None,
    token_ids: Sequence[int] | None = None,
    model: str = "",
    sampling_params=None,
    sparse_config=None,
    stream_mode: str | int = "every_step",
    every_k: int = 0,
    include_canvas: bool = False,
    mask_placeholder: str = "",
    request_id: str = "",
    priority: int = 0,
    cancel_on_disconnect: bool = False,
) -> pb.GenerateRequest:
    """A GenerateRequest from Python values (dicts, or SamplingParams / SparseConfig)."""
    req = pb.GenerateRequest(
        request_id=request_id,
        model=model,
        priority=priority,
        cancel_on_disconnect=cancel_on_disconnect,
        stream_options=pb.StreamOptions(
            mode=STREAM_MODES[stream_mode] if isinstance(stream_mode, str) else stream_mode,
            every_k=every_k,
            include_canvas=include_canvas,
            mask_placeholder=mask_placeholder,
        ),
    )
    if messages is not None:
        req.messages.messages.extend(
            pb.ChatMessage(role=m["role"], content=m["content"]) for m in messages
        )
    elif token_ids is not None:
        req.token_ids.ids.extend(token_ids)
    elif prompt is not None:
        req.text = prompt
    sp = _params_msg(pb.SamplingParams, sampling_params)
    if sp is not None:
        req.sampling_params.CopyFrom(sp)
    sc = _params_msg(pb.SparseConfig, sparse_config)
    if sc is not None:
        req.sparse_config.CopyFrom(sc)
    return req


class Canvas:
    """Applies StepUpdates in order; restarts when the attempt changes."""

    def __init__(self) -> None:
        self.attempt: int | None = None
        self.tokens: dict[int, int] = {}
        self.text = ""
        self.canvas = ""
        self.step = 0

    def apply(self, upd: pb.StepUpdate) -> None:
        if upd.attempt != self.attempt:
            self.attempt, self.tokens, self.text = upd.attempt, {}, ""
        for p, t in zip(upd.positions, upd.token_ids, strict=True):
            self.tokens[p] = t
        self.text += upd.text_delta
        if upd.canvas:
            self.canvas = upd.canvas
        self.step = upd.step

    def token_ids(self, length: int, fill: int = -1) -> list[int]:
        return [self.tokens.get(i, fill) for i in range(length)]


class _Resume:
    """What a client needs to re-attach: the request id and the last step it saw."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.accepted = False
        self.step = 0
        self.attempt = 0

    def see(self, ev: pb.GenerateEvent) -> bool:
        """Record an event; False when it is the Accepted of a re-attach (not shown again)."""
        kind = ev.WhichOneof("event")
        if kind == "accepted":
            if self.accepted:
                return False
            self.accepted = True
        elif kind == "step":
            self.step, self.attempt = ev.step.step, ev.step.attempt
        return True

    def attach_request(self, opts: pb.StreamOptions) -> pb.AttachRequest:
        return pb.AttachRequest(
            request_id=self.request_id,
            after_step=self.step,
            attempt=self.attempt,
            stream_options=opts,
        )


def _credentials(tls: bool, root_certificates: bytes | None):
    return grpc.ssl_channel_credentials(root_certificates) if tls else None


class Client:
    """Synchronous client. `target` may be a list: the others are used to re-attach."""

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
        self._creds = _credentials(tls, root_certificates)
        self._options = list(options)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._channels: dict[str, grpc.Channel] = {}
        self._current = 0
        self.max_reattach = max_reattach

    def _stub(self, i: int | None = None) -> dllm_pb2_grpc.DllmServiceStub:
        t = self.targets[self._current if i is None else i]
        if t not in self._channels:
            self._channels[t] = (
                grpc.secure_channel(t, self._creds, options=self._options)
                if self._creds
                else grpc.insecure_channel(t, options=self._options)
            )
        return dllm_pb2_grpc.DllmServiceStub(self._channels[t])

    def generate(
        self, prompt: str | None = None, *, timeout: float | None = None, reattach: bool = True,
        **kwargs,
    ) -> Iterator[pb.GenerateEvent]:  # fmt: skip
        """Stream the events of one generation (see `build_request` for the arguments)."""
        req = build_request(prompt, **kwargs)
        if not req.request_id:
            req.request_id = uuid.uuid4().hex
        yield from self.stream(req, timeout=timeout, reattach=reattach)

    def stream(
        self, req: pb.GenerateRequest, *, timeout: float | None = None, reattach: bool = True
    ) -> Iterator[pb.GenerateEvent]:
        resume = _Resume(req.request_id)
        deadline = time.monotonic() + timeout if timeout is not None else None
        call = self._stub().Generate(req, timeout=timeout, metadata=self._metadata)
        tries = 0
        while True:
            try:
                for ev in call:
                    if resume.see(ev):
                        yield ev
                return
            except GeneratorExit:
                call.cancel()  # the caller stopped reading: end the RPC now, not at GC time
                raise
            except grpc.RpcError as e:
                if not reattach or e.code() not in RETRYABLE or tries >= self.max_reattach:
                    raise
                tries += 1
                time.sleep(min(2.0, 0.1 * 2**tries))
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

    def generate_text(self, prompt: str | None = None, **kwargs) -> pb.Completed:
        """Run one generation to the end; returns its Completed event."""
        last = None
        for ev in self.generate(prompt, **kwargs):
            if ev.WhichOneof("event") == "completed":
                last = ev.completed
        if last is None:
            raise RuntimeError("the stream ended without a Completed event")
        return last

    def attach(
        self, request_id: str, after_step: int = 0, attempt: int = 0, *,
        stream_options: pb.StreamOptions | None = None, timeout: float | None = None,
    ) -> Iterator[pb.GenerateEvent]:  # fmt: skip
        req = pb.AttachRequest(request_id=request_id, after_step=after_step, attempt=attempt)
        if stream_options is not None:
            req.stream_options.CopyFrom(stream_options)
        call = self._stub().Attach(req, timeout=timeout, metadata=self._metadata)
        try:
            yield from call
        except GeneratorExit:
            call.cancel()
            raise

    def cancel(self, request_id: str, timeout: float | None = 10.0) -> str:
        return (
            self._stub()
            .Cancel(
                pb.CancelRequest(request_id=request_id), timeout=timeout, metadata=self._metadata
            )
            .status
        )

    def server_info(self, timeout: float | None = 10.0) -> pb.ServerInfo:
        return self._stub().GetServerInfo(
            pb.GetServerInfoRequest(), timeout=timeout, metadata=self._metadata
        )

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()
        self._channels.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient:
    """asyncio client with the same methods as `Client` (async iterators / coroutines)."""

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
        self._creds = _credentials(tls, root_certificates)
        self._options = list(options)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._current = 0
        self.max_reattach = max_reattach

    def _stub(self) -> dllm_pb2_grpc.DllmServiceStub:
        t = self.targets[self._current]
        if t not in self._channels:
            self._channels[t] = (
                grpc.aio.secure_channel(t, self._creds, options=self._options)
                if self._creds
                else grpc.aio.insecure_channel(t, options=self._options)
            )
        return dllm_pb2_grpc.DllmServiceStub(self._channels[t])

    async def generate(
        self, prompt: str | None = None, *, timeout: float | None = None, reattach: bool = True,
        **kwargs,
    ) -> AsyncIterator[pb.GenerateEvent]:  # fmt: skip
        req = build_request(prompt, **kwargs)
        if not req.request_id:
            req.request_id = uuid.uuid4().hex
        async for ev in self.stream(req, timeout=timeout, reattach=reattach):
            yield ev

    async def stream(
        self, req: pb.GenerateRequest, *, timeout: float | None = None, reattach: bool = True,
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> AsyncIterator[pb.GenerateEvent]:  # fmt: skip
        """`metadata` replaces the client's own for this call (a gateway forwarding each
        caller's token over one channel)."""
        md = self._metadata if metadata is None else tuple(metadata)
        resume = _Resume(req.request_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout is not None else None
        call = self._stub().Generate(req, timeout=timeout, metadata=md)
        tries = 0
        while True:
            try:
                async for ev in call:
                    if resume.see(ev):
                        yield ev
                return
            except grpc.aio.AioRpcError as e:
                if not reattach or e.code() not in RETRYABLE or tries >= self.max_reattach:
                    raise
                tries += 1
                await asyncio.sleep(min(2.0, 0.1 * 2**tries))
                self._current = (self._current + 1) % len(self.targets)
                left = None if deadline is None else max(0.001, deadline - loop.time())
                if not resume.accepted:
                    call = self._stub().Generate(req, timeout=left, metadata=md)
                else:
                    call = self._stub().Attach(
                        resume.attach_request(req.stream_options),
                        timeout=left,
                        metadata=md,
                    )

    async def generate_text(self, prompt: str | None = None, **kwargs) -> pb.Completed:
        last = None
        async for ev in self.generate(prompt, **kwargs):
            if ev.WhichOneof("event") == "completed":
                last = ev.completed
        if last is None:
            raise RuntimeError("the stream ended without a Completed event")
        return last

    async def attach(
        self, request_id: str, after_step: int = 0, attempt: int = 0, *,
        stream_options: pb.StreamOptions | None = None, timeout: float | None = None,
    ) -> AsyncIterator[pb.GenerateEvent]:  # fmt: skip
        req = pb.AttachRequest(request_id=request_id, after_step=after_step, attempt=attempt)
        if stream_options is not None:
            req.stream_options.CopyFrom(stream_options)
        async for ev in self._stub().Attach(req, timeout=timeout, metadata=self._metadata):
            yield ev

    async def cancel(self, request_id: str, timeout: float | None = 10.0) -> str:
        resp = await self._stub().Cancel(
            pb.CancelRequest(request_id=request_id), timeout=timeout, metadata=self._metadata
        )
        return resp.status

    async def server_info(
        self, timeout: float | None = 10.0, metadata: Sequence[tuple[str, str]] | None = None
    ) -> pb.ServerInfo:
        md = self._metadata if metadata is None else tuple(metadata)
        return await self._stub().GetServerInfo(
            pb.GetServerInfoRequest(), timeout=timeout, metadata=md
        )

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
