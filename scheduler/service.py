"""The DllmService handlers: validate, enqueue, relay; Attach, Cancel, GetServerInfo."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import redis.asyncio as aioredis
import redis.exceptions

from dllmserve import tracing
from dllmserve.broker import redis_keys as rk
from dllmserve.broker.records import RequestView, read_status, set_traceparent
from dllmserve.broker.scripts import AsyncBroker, Enqueue, Enqueued, StoredRequest
from dllmserve.broker.workers import READY, WorkerRecord
from dllmserve.errors import CapacityError, ValidationError
from dllmserve.scheduler import errors
from dllmserve.scheduler.auth import client_of, quota_of
from dllmserve.scheduler.config import SchedulerConfig
from dllmserve.scheduler.dispatcher import Dispatcher
from dllmserve.scheduler.metrics import SchedulerMetrics
from dllmserve.scheduler.relay import ClientGone, RelayError, ResultHub, follow
from dllmserve.scheduler.served import ServedModels
from dllmserve.scheduler.validation import (
    check_fits,
    check_request_id,
    check_stream_options,
    validate_request,
)
from dllmserve.v1 import dllm_pb2 as pb
from dllmserve.v1 import dllm_pb2_grpc

log = logging.getLogger(__name__)
# Redis is down or restarting: the client should retry (its stream can be re-attached).
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
CANCEL_POLL_S = 0.02  # how often Cancel looks whether the worker has confirmed

try:
    from importlib.metadata import version as _pkg_version

    VERSION = _pkg_version("dllmserve")
except Exception:  # pragma: no cover - not installed
    VERSION = "0.0.0"


class DllmServicer(dllm_pb2_grpc.DllmServiceServicer):
    def __init__(
        self,
        client: aioredis.Redis,
        hub: ResultHub,
        dispatcher: Dispatcher,
        cfg: SchedulerConfig,
        scheduler_id: str,
    ) -> None:
        self._r = client
        self._hub = hub
        self._dispatcher = dispatcher
        self._cfg = cfg
        self._id = scheduler_id
        self._broker = AsyncBroker(client)
        self._background: set[asyncio.Task] = set()
        self.draining = False
        self.streams = 0  # open Generate/Attach streams
        self._served = ServedModels(client, cfg.model_memory_s)
        self.metrics = SchedulerMetrics(cfg, dispatcher, lambda: self.streams)

    # --- RPCs -------------------------------------------------------------------------------

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext):
        span = tracing.start("dllmserve.generate", model=request.model or None)
        try:
            async for ev in self._generate(request, context, span):
                yield ev
        except (errors.RpcError, *REDIS_DOWN) as e:
            await self._abort(context, "Generate", request.request_id, e)
        finally:
            tracing.end(span)

    async def Attach(self, request: pb.AttachRequest, context: grpc.aio.ServicerContext):
        try:
            async for ev in self._attach(request, context):
                yield ev
        except (errors.RpcError, *REDIS_DOWN) as e:
            await self._abort(context, "Attach", request.request_id, e)

    async def Cancel(self, request: pb.CancelRequest, context: grpc.aio.ServicerContext):
        try:
            return pb.CancelResponse(status=await self._cancel_call(request, context))
        except (errors.RpcError, *REDIS_DOWN) as e:
            await self._abort(context, "Cancel", request.request_id, e)

    async def GetServerInfo(self, request, context: grpc.aio.ServicerContext) -> pb.ServerInfo:
        try:
            return await self._server_info()
        except REDIS_DOWN as e:
            await self._abort(context, "GetServerInfo", "", e)

    async def _abort(self, context, rpc: str, rid: str, e: Exception) -> None:
        """Every call that fails ends here: logged with its request id and cause, counted,
        then sent to the client (a Redis error as UNAVAILABLE: the client may retry)."""
        if isinstance(e, errors.RpcError):
            status = e.status
        else:
            status = errors.simple(grpc.StatusCode.UNAVAILABLE, f"redis unavailable: {e}").status
        self.metrics.on_refused(rid, status.code, status.details, rpc)
        await context.abort_with_status(status)

    async def _server_info(self) -> pb.ServerInfo:
        info = pb.ServerInfo(
            version=VERSION,
            scheduler_id=self._id,
            dispatcher_leader=self._dispatcher.is_leader,
            queue_length=await self._r.xlen(rk.PENDING),
            max_queue=self._cfg.max_queue,
        )
        counts: dict[str, int] = {}
        for w in sorted(rk.text(x) for x in await self._r.smembers(rk.WORKERS)):
            rec = WorkerRecord.parse(await WorkerRecord.read(self._r, w))
            if not rec.state:
                continue
            load = int(rk.text(await self._r.get(rk.load_key(w))) or 0)
            wi = pb.WorkerInfo(
                worker_id=w,
                model=rec.model,
                device=rec.device,
                state=rec.state,
                running=rec.running,
                waiting=rec.waiting,
                assigned=load,
                slots=rec.slots,
                free_pages=rec.free_pages,
                total_pages=rec.total_pages,
                max_num_seqs=rec.max_num_seqs,
            )
            info.workers.append(wi)
            counts[wi.model] = counts.get(wi.model, 0) + 1
            if wi.state == READY:
                info.free_slots += max(0, wi.slots - load)
        for name in sorted(set(counts) | set(await self._served.known())):
            lengths = [m.max_len for m in await self._served.limits_of(name)]
            info.models.append(
                pb.ModelInfo(
                    name=name, workers=counts.get(name, 0), max_model_len=max(lengths, default=0)
                )
            )
        return info

    # --- internals -------------------------------------------------------------------------

    async def _generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext, span=None
    ) -> AsyncIterator[pb.GenerateEvent]:
        if self.draining:
            raise errors.simple(grpc.StatusCode.UNAVAILABLE, "scheduler is draining; retry")
        try:  # every bound, the model's too, before anything is queued
            admission = validate_request(request, self._cfg.limits)
            model = await self._served.resolve(request.model)
            check_fits(admission, await self._served.limits_of(model))
        except ValidationError as e:
            raise errors.invalid_argument(e.field, e.reason) from None
        except CapacityError as e:  # it could never run, however long it waited: no RetryInfo
            raise errors.resource_exhausted(str(e), retry_after_s=None) from None
        client = client_of(context, self._authenticated)
        rid = request.request_id or uuid.uuid4().hex
        remaining = context.time_remaining()
        deadline = time.time() + remaining if remaining is not None else 0.0
        stored_request = StoredRequest(
            request_id=rid,
            admission=admission,
            model=model,
            priority=request.priority,
            deadline=deadline,
            options=request.stream_options.SerializeToString(),
            client=client,
            quota=quota_of(context, client, self._authenticated, self._cfg.trust_client_header),
            last_step=admission.sampling_params.max_steps,
            ttl_s=self._cfg.result_ttl_s,
        )
        enqueued = await self._broker.enqueue(
            stored_request,
            max_queue=self._cfg.max_queue,
            per_client=self._cfg.max_queue_per_client,
            owned=self._authenticated,
        )
        _raise_refusal(enqueued, rid, self._cfg.retry_after_s)
        value = enqueued.value
        created = enqueued.outcome is Enqueue.QUEUED
        if created:
            self.metrics.on_accepted(rid, model, int(value), request.priority)
            if span is not None:  # the worker's span becomes a child of this one
                span.set_attributes({"dllmserve.request_id": rid, "dllmserve.model": model})
                await set_traceparent(self._r, rid, tracing.traceparent(span))
        accepted = pb.GenerateEvent(
            accepted=pb.Accepted(
                request_id=rid,
                queue_position=int(value) if created else 0,
                duplicate=not created,
                status=rk.QUEUED if created else value,
            )
        )
        on_disconnect = 0.0 if (created and request.cancel_on_disconnect) else None
        relay = self._relay(
            rid,
            request.stream_options,
            0,
            0,
            on_disconnect,
            accepted,
            context,
            known_attempt=1 if created else 0,
        )
        async for ev in relay:
            yield ev

    async def _attach(
        self, request: pb.AttachRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateEvent]:
        rid = request.request_id
        try:
            check_request_id(rid, required=True)
            if request.HasField("stream_options"):
                check_stream_options(request.stream_options, self._cfg.limits)
        except ValidationError as e:
            raise errors.invalid_argument(e.field, e.reason) from None
        view = await self._visible(rid, context)
        # Past the request's last step or attempt no record will ever come: refuse, don't wait.
        # (Requests queued before `steps` was stored have none: no bound is known.)
        if request.after_step < 0 or request.attempt < 0:
            raise errors.invalid_argument(
                "after_step" if request.after_step < 0 else "attempt", "must be >= 0"
            )
        if request.attempt > view.attempt:
            raise errors.out_of_range(
                f"attempt {request.attempt} is beyond the request's attempt {view.attempt}",
            )
        if view.last_step is not None and request.after_step > view.last_step:
            raise errors.out_of_range(
                f"after_step {request.after_step} is beyond the request's {view.last_step} steps",
            )
        if request.HasField("stream_options"):
            opts = request.stream_options
        else:
            opts = pb.StreamOptions.FromString(view.options)
        accepted = pb.GenerateEvent(accepted=pb.Accepted(request_id=rid, status=view.status))
        relay = self._relay(rid, opts, request.after_step, request.attempt, None, accepted, context)
        async for ev in relay:
            yield ev

    async def _relay(
        self,
        rid: str,
        opts: pb.StreamOptions,
        after_step: int,
        after_attempt: int,
        cancel_after_s: float | None,
        first: pb.GenerateEvent,
        context: grpc.aio.ServicerContext,
        known_attempt: int = 0,
    ) -> AsyncIterator[pb.GenerateEvent]:
        """Send `first`, then relay the result stream; when the client goes away before the
        end (even right after `first`), maybe cancel the request.

        The bookkeeping runs from the call's done-callback rather than a `finally`: gRPC may
        drop a handler that waits for its next message without ever closing it."""
        state = {"finished": False}
        token = uuid.uuid4().hex
        grace = self._cfg.orphan_grace_s if cancel_after_s is None else cancel_after_s

        def on_done(_ctx) -> None:
            self.streams -= 1
            self._spawn(self._left(rid, token, None if state["finished"] else grace))

        # Registered before the watch is recorded, so that a call cancelled in between still
        # removes it; each stream has its own token, so removals are idempotent.
        self.streams += 1
        context.add_done_callback(on_done)
        await asyncio.shield(self._watch(rid, token, True))
        try:
            yield first
            events = follow(
                self._hub,
                self._r,
                rid,
                opts,
                after_step,
                after_attempt,
                client_gone=lambda: context.cancelled() or context.done(),
                known_attempt=known_attempt,
            )
            async for ev in events:
                yield ev
            state["finished"] = True
        except ClientGone:
            return
        except RelayError as e:
            state["finished"] = True
            raise errors.from_code(e.code, e.message, e.field, e.reason) from None

    async def _watch(self, rid: str, token: str, add: bool) -> None:
        key = rk.watch_key(rid)
        pipe = self._r.pipeline(transaction=True)
        if add:
            pipe.sadd(key, token)
        else:
            pipe.srem(key, token)
        pipe.expire(key, self._cfg.result_ttl_s + 86400)
        await pipe.execute()

    async def _left(self, rid: str, token: str, cancel_after_s: float | None) -> None:
        """A stream of the request ended; without any stream left after the grace period, an
        unfinished request is cancelled (no client will read it)."""
        await self._watch(rid, token, False)
        if cancel_after_s is None or cancel_after_s < 0:
            return
        await asyncio.sleep(cancel_after_s)
        if await self._r.scard(rk.watch_key(rid)) == 0:
            await self._cancel(rid, "CANCELLED", "the client went away")

    @property
    def _authenticated(self) -> bool:
        return bool(self._cfg.auth_tokens)

    async def _visible(self, rid: str, context: grpc.aio.ServicerContext) -> RequestView:
        """The stored request; NOT_FOUND when it does not exist or, with auth on, belongs to
        another tenant (the same answer, so nothing tells one case from the other)."""
        view = RequestView.parse(await RequestView.read(self._r, rid))
        mine = not self._authenticated or view.client == client_of(context, True)
        if not view.status or not mine:
            raise errors.simple(grpc.StatusCode.NOT_FOUND, f"no request {rid!r} (or it expired)")
        return view

    async def _cancel_call(self, request: pb.CancelRequest, context) -> str:
        """Cancel for a client: a running request's worker aborts it at its next iteration;
        wait (up to `cancel_wait_s`) to answer "cancelled" only once it did. "cancelling" means
        it has not confirmed yet (a stalled worker): the request ends cancelled when the worker
        gets to it or the watchdog's reclaim does, never as another attempt."""
        rid = request.request_id
        try:
            check_request_id(rid, required=True)
        except ValidationError as e:
            raise errors.invalid_argument(e.field, e.reason) from None
        await self._visible(rid, context)
        status = await self._cancel(rid, "CANCELLED", "cancelled by the client")
        if status == "notfound":  # expired in between
            raise errors.simple(grpc.StatusCode.NOT_FOUND, f"no request {rid!r} (or it expired)")
        end = time.monotonic() + self._cfg.cancel_wait_s
        while status == "cancelling" and time.monotonic() < end:
            await asyncio.sleep(CANCEL_POLL_S)
            now = rk.text(await read_status(self._r, rid))
            status = now if now in rk.TERMINAL else status
        return status

    async def _cancel(self, rid: str, code: str, msg: str) -> str:
        outcome = await self._broker.cancel(rid, code=code, msg=msg, ttl_s=self._cfg.result_ttl_s)
        return outcome.value

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _raise_refusal(enqueued: Enqueued, rid: str, retry_after_s: float) -> None:
    """The gRPC error of an enqueue the queue refused (nothing when it queued or deduplicated)."""
    if enqueued.outcome is Enqueue.QUEUE_FULL:
        raise errors.resource_exhausted(
            f"the queue is full ({enqueued.value} requests waiting); retry later", retry_after_s
        )
    if enqueued.outcome is Enqueue.NOT_YOURS:
        raise errors.simple(
            grpc.StatusCode.NOT_FOUND,
            f"request_id {rid!r} is not available to this client; choose another",
        )
    if enqueued.outcome is Enqueue.CLIENT_CAP:
        raise errors.resource_exhausted(
            f"this client already has {enqueued.value} requests waiting in the queue (the cap per "
            "client); retry later",
            retry_after_s,
        )
    if enqueued.outcome is Enqueue.CONFLICT:
        raise errors.simple(
            grpc.StatusCode.ALREADY_EXISTS,
            f"request_id {rid!r} is already used by a different request",
        )
