"""The two generation routes: a body becomes gRPC Generate calls, their events an answer.

A request is answered only after the scheduler accepted each of its generations: a refusal
(bad field, unknown model, full queue, auth, no ready worker) is a plain HTTP error even for a
stream. Every call has a deadline (`--rpc-timeout`) and `cancel_on_disconnect`: an HTTP client
that goes away, streaming or not, ends its gRPC calls, so the scheduler cancels the
generations and their worker frees their memory at its next step; the gateway counts them
as `finished_reason="cancelled"`. An error after acceptance (a worker-side check, lost
request state, the deadline) is a plain HTTP error for a JSON answer and one OpenAI-shaped
`error` event before `[DONE]` for a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from dllmserve.client import AsyncClient, Completed, Event, StepUpdate
from dllmserve.gateway import responses as out
from dllmserve.gateway.body import read_json
from dllmserve.gateway.errors import ApiError, from_rpc
from dllmserve.gateway.metrics import GatewayMetrics
from dllmserve.gateway.requests import Plan, plan
from dllmserve.gateway.stop import StopText, TokenTexts, cut

CLIENT_HEADER = "x-dllmserve-client"  # the caller's identity, for the per-client queue cap
SERVED_TTL_S = 10.0  # how long the name of the one served model is remembered
DISCONNECTED = 499  # nginx's "client closed request": the access log's status for those


class Generation:
    def __init__(self, client: AsyncClient, metrics: GatewayMetrics, cfg) -> None:
        self.client = client
        self.metrics = metrics
        self.cfg = cfg
        self._served = (0.0, "")  # (when learned, the one model served)

    async def answer(self, request: Request, chat: bool) -> Response:
        t0 = time.perf_counter()
        try:
            body = await read_json(request, self.cfg.max_body_bytes, self.cfg.body_timeout_s)
            p = plan(body, chat, request.state.request_id)
            md = metadata(request)
            streams = await self._open(p, md)
        except ApiError as e:
            return error_response(request, e)
        p.model = p.model or await self._served_model(md)  # the labels and bodies name it
        if p.stream:
            return StreamingResponse(
                self._stream(request, p, streams, t0),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        return await self._complete(request, p, streams)

    async def _open(self, p: Plan, md: tuple) -> list[AsyncIterator[Event]]:
        """Start every generation and wait for each one's Accepted (or its refusal)."""
        t = self.cfg.rpc_timeout_s
        streams = [self.client.stream(r, metadata=md, timeout=t) for r in p.requests]
        firsts = await asyncio.gather(*(s.__anext__() for s in streams), return_exceptions=True)
        failed = next((f for f in firsts if isinstance(f, BaseException)), None)
        if failed is None:
            return streams
        for s in streams:
            await s.aclose()
        if isinstance(failed, grpc.RpcError):
            raise from_rpc(failed, p.chat, p.renames)
        if isinstance(failed, StopAsyncIteration):
            raise ApiError(502, "the scheduler ended the stream at once", type="server_error")
        raise failed

    async def _served_model(self, md: tuple) -> str:
        """The model an empty `model` ran on, when one model is served (else "")."""
        learned, name = self._served
        if time.monotonic() - learned > SERVED_TTL_S:
            try:
                info = await self.client.server_info(timeout=3.0, metadata=md)
                name = info.models[0].name if len(info.models) == 1 else ""
            except grpc.RpcError:
                name = ""
            self._served = (time.monotonic(), name)
        return name

    def _count(self, p: Plan, reason: str, n: int = 1) -> None:
        if n:
            self.metrics.generations.labels(p.model, reason).inc(n)

    def _end(self, p: Plan, c: Choice) -> str:
        """End a choice of a stream: its finish_reason, counted once."""
        c.reason = "stop" if c.done is None else out.finish_reason(c.done, c.text.stopped)
        self._count(p, c.reason)
        return c.reason

    async def _complete(self, request: Request, p: Plan, streams: list) -> Response:
        """A JSON answer; the client going away first cancels every generation."""
        tokens = [TokenTexts() for _ in streams]
        pairs = zip(streams, tokens, strict=True)
        tasks = [asyncio.create_task(_completed(s, t)) for s, t in pairs]
        gone = asyncio.create_task(_disconnect(request))
        try:
            waiting = {*tasks, gone}
            while waiting != {gone}:
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if gone in done:
                    self._count(p, "cancelled", sum(not t.done() for t in tasks))
                    request.state.error = "the client went away: generations cancelled"
                    return Response(status_code=DISCONNECTED)
                for t in done:
                    t.result()  # the first error ends the answer
            dones = [t.result() for t in tasks]
        except (grpc.RpcError, ApiError) as e:
            self._count(p, "error", sum(not _succeeded(t) for t in tasks))
            err = from_rpc(e, p.chat, p.renames) if isinstance(e, grpc.RpcError) else e
            return error_response(request, err)
        finally:
            await _close([*tasks, gone], streams)
        texts, reasons, returned = [], [], []
        for d, t in zip(dones, tokens, strict=True):
            text, stopped = cut(d.text, p.stop)
            texts.append(text)
            reasons.append(out.finish_reason(d, stopped))
            returned.append(
                t.count(text, d.usage.generated_tokens) if stopped else d.usage.generated_tokens
            )
            self._count(p, reasons[-1])
        return JSONResponse(out.completion(p, dones, texts, reasons, p.n, returned))

    async def _stream(
        self, request: Request, p: Plan, streams: list, t0: float
    ) -> AsyncIterator[bytes]:
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
        choices = [Choice(p.stop) for _ in streams]
        open_ = len(streams)
        first_token = True
        self.metrics.open_streams.inc()
        try:
            if p.chat:
                for i in range(len(streams)):
                    yield out.sse(out.chunk(p, i, "", role=True))
            while open_:
                i, ev = await queue.get()
                c = choices[i]
                if ev is None:
                    open_ -= 1
                elif isinstance(ev, grpc.RpcError):
                    err = from_rpc(ev, p.chat, p.renames)
                    request.state.error = err.message
                    self._count(p, "error", sum(c.reason is None for c in choices))
                    for c in choices:
                        c.reason = c.reason or "error"
                    yield out.sse(err.body())
                    break
                elif isinstance(ev, StepUpdate) and c.reason is None:
                    c.tokens.feed(ev.positions, ev.token_texts)
                    text = c.text.feed(ev.text_delta)
                    if text and first_token:
                        first_token = False
                        self.metrics.first_token.labels(p.model).observe(time.perf_counter() - t0)
                    if text or p.denoise:
                        yield out.sse(out.chunk(p, i, text, step=ev if p.denoise else None))
                    if c.text.stopped:  # a stop string: this choice is done for the client
                        yield out.sse(out.chunk(p, i, finish=self._end(p, c)))
                elif isinstance(ev, Completed):
                    c.done = ev
                    if c.reason is None:
                        rest = c.text.flush()
                        yield out.sse(out.chunk(p, i, rest, finish=self._end(p, c)))
            else:
                if p.include_usage and all(c.done is not None for c in choices):
                    dones = [c.done for c in choices]
                    yield out.sse(out.usage_chunk(p, dones, p.n, [c.returned() for c in choices]))
            yield out.DONE
        finally:
            self.metrics.open_streams.dec()
            gone = [c for c in choices if c.reason is None]  # the client left before their end
            if gone:
                self._count(p, "cancelled", len(gone))
                request.state.error = "the client went away: generations cancelled"
            await _close(tasks, streams)


class Choice:
    """One choice of a stream: its text (cut at a stop string), tokens and how it ended (None
    while it runs)."""

    def __init__(self, stops: list[str]) -> None:
        self.text = StopText(stops)
        self.tokens = TokenTexts()
        self.done: Completed | None = None
        self.reason: str | None = None

    def returned(self) -> int:
        """Answer tokens the client got (those a stop string cut away left out)."""
        generated = self.done.usage.generated_tokens
        if not self.text.stopped:
            return generated
        return self.tokens.count(self.text.text[: self.text.sent], generated)


def _succeeded(t: asyncio.Task) -> bool:
    return t.done() and not t.cancelled() and t.exception() is None


async def _completed(stream, tokens: TokenTexts) -> Completed:
    async for ev in stream:
        if isinstance(ev, StepUpdate):
            tokens.feed(ev.positions, ev.token_texts)
        elif isinstance(ev, Completed):
            return ev
    raise ApiError(502, "the stream ended without a result", type="server_error")


async def _close(tasks: list[asyncio.Task], streams: list) -> None:
    """Cancel the readers (a cancelled read cancels its gRPC call: the scheduler then cancels
    the generation) and close the streams. Each await is on its own, so the cancellation of a
    response whose client left (Starlette cancels its task group) cannot skip the rest."""
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t
    for s in streams:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await s.aclose()


async def _disconnect(request: Request) -> None:
    """Returns when the client goes away (the body is read: only a disconnect can come)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def metadata(request: Request) -> tuple:
    """gRPC metadata of the caller's calls: its Authorization header, forwarded, and its
    address (the scheduler's per-client queue cap counts HTTP callers apart with it)."""
    client = request.client
    md: tuple = ((CLIENT_HEADER, f"ip:{client.host}"),) if client else ()
    auth = request.headers.get("authorization", "")
    if not auth:
        return md
    if not auth.isascii() or not auth.isprintable():
        raise ApiError(
            401, "the Authorization header must be printable ASCII", type="authentication_error"
        )
    return (("authorization", auth), *md)


def error_response(request: Request, e: ApiError) -> JSONResponse:
    """`e` in OpenAI's shape; its message goes on the request's access-log line too."""
    request.state.error = e.message
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers())
