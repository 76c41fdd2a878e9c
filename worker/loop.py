"""The worker loop: inbox -> engine -> result streams, one engine iteration at a time.

Each pass: apply cancellations, take new batches from the inbox (without blocking while the
engine has work), end requests past their deadline, run one `engine.step()`, and publish every
StepUpdate of that step to its request's result stream in one pipelined round trip. An inbox
entry (a batch) is acknowledged and deleted when all its requests are finished; what is left in
the inbox of a dead worker is therefore exactly the work the dispatcher must take back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis
import redis.exceptions

from dllmserve.broker import redis_keys as rk
from dllmserve.broker.redis_link import Backoff
from dllmserve.broker.scripts import Broker, Completion, Failure, Started, StepRecord
from dllmserve.engine.outputs import StepOutput
from dllmserve.engine.protocol import StepEngine
from dllmserve.errors import CapacityError, ValidationError
from dllmserve.logs import EVENT_ATTR
from dllmserve.v1 import dllm_pb2 as pb
from dllmserve.worker.compiling import Compiles
from dllmserve.worker.config import WorkerConfig
from dllmserve.worker.faults import Faults
from dllmserve.worker.inbox import OpenEntries, read_entries
from dllmserve.worker.membership import Membership
from dllmserve.worker.observe import Observer
from dllmserve.worker.publisher import InlinePublisher, Publisher
from dllmserve.worker.render import CanvasRenderer, provisional_tokens, token_edits
from dllmserve.worker.running import RunningRequest, completed
from dllmserve.worker.snapshot import Snapshot
from dllmserve.worker.watchdog import Watchdog

log = logging.getLogger(__name__)


class WorkerLoop:
    """The engine's thread. It alone touches the engine, `active` and the control cursor;
    the publisher's jobs alone touch `entries`; the other threads read `snapshot` (replaced
    whole), `last_iteration` and the events (docs/service.md, "The worker's threads")."""

    def __init__(
        self, engine: StepEngine, client: redis.Redis, cfg: WorkerConfig, worker_id: str
    ) -> None:
        self.engine = engine
        self.r = client
        self.cfg = cfg
        self.membership = Membership(client, worker_id, cfg.drain_timeout_s)
        self.model_name = cfg.model_name or engine.model_name
        self.broker = Broker(client)
        self.active: dict[str, RunningRequest] = {}
        self.entries = OpenEntries(client)  # the inbox entries to acknowledge (publisher jobs)
        self.stop = threading.Event()  # set by SIGTERM: drain
        self.reaped = threading.Event()  # set by the heartbeat when the dispatcher reaped us
        self.snapshot = Snapshot(worker_id)
        self._ctl_last = "0-0"
        self.faults = Faults()
        self.watchdog = Watchdog(cfg.stall_factor, cfg.stall_floor_s, self.membership.withdraw)
        self.steps = 0
        self.last_iteration = time.monotonic()  # read by the /livez probe
        self.observe = Observer(self.model_name, lambda: self.snapshot.stats, worker_id, client)
        self.pub = Publisher() if cfg.async_publish else InlinePublisher()
        self.pub.start()
        self.compiles = Compiles(engine)  # structured outputs compile off this loop

    @property
    def id(self) -> str:
        """The id the worker serves under (its membership's; a rejoin changes it)."""
        return self.membership.id

    # ---- setup and main loop -------------------------------------------------------------
    def ensure_group(self) -> None:
        self.membership.ensure_group()

    def run(self, before_leave: Callable[[], None] = lambda: None) -> None:
        """Serve until `stop` is set, then drain; `before_leave` (stopping the heartbeat) runs
        before the worker deregisters."""
        self.ensure_group()
        self.update_snapshot()
        self.watchdog.start()
        backoff = Backoff(log, f"worker {self.id}")
        while not self.stop.is_set():
            try:
                self.iterate()
                backoff.ok()
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
                time.sleep(backoff.failed(e))
        self.membership.drain(self._finish_running, before_leave)
        self.watchdog.halt.set()

    def iterate(self) -> None:
        self.last_iteration = time.monotonic()
        if self.reaped.is_set():
            self._forget_all("was reaped")
            self.ensure_group()
            self.reaped.clear()
        self._read_ctl()
        busy = self.engine.has_unfinished()
        self._read_inbox(block_ms=None if busy else self.cfg.idle_block_ms)
        self._enter_compiled()
        self._check_deadlines()
        if self.engine.has_unfinished():
            updates = self._step()
            if self.watchdog.tripped.is_set():  # its requests were taken back meanwhile
                self._rejoin()
                return
            self.steps += 1
            self._publish(updates)
        self.update_snapshot()

    def _step(self) -> list[StepOutput]:
        with self.watchdog.iteration():
            self.faults.before_step()
            return self.observe.step(self.engine)

    def update_snapshot(self) -> None:
        stats = {**self.engine.stats(), "active": len(self.active)}
        self.snapshot = Snapshot(self.id, self.steps, stats)

    # ---- leaving and coming back (dllmserve.worker.membership) -----------------------------
    def _forget_all(self, why: str) -> None:
        """The dispatcher took our work back (we missed heartbeats, or stalled): drop it."""
        log.warning("worker %s %s; dropping %d requests", self.id, why, len(self.active))
        self.pub.submit(self.entries.clear)
        self.pub.flush()
        for rid in list(self.active):
            self.engine.abort(rid)
        self.active.clear()

    def _rejoin(self) -> None:
        """The stalled step came back; its requests are other attempts' now. Drop them and
        serve again under a fresh id (published before the heartbeat beats again)."""
        self._forget_all("stalled")
        self.membership.rejoin()
        self._ctl_last = "0-0"
        self.update_snapshot()
        self.watchdog.reset()

    def _finish_running(self, deadline: float) -> list[str]:
        """(Drain.) Step until the engine's requests end or `deadline` (time.monotonic()),
        then abort those left and stop the publisher; returns their ids, to hand back."""
        while self.engine.has_unfinished() and time.monotonic() < deadline:
            self._read_ctl()
            self._check_deadlines()
            updates = self._step()
            if self.watchdog.tripped.is_set():
                break  # the dispatcher takes these back
            self._publish(updates)
        self.pub.flush()
        left = list(self.active)
        for rid in left:
            self.engine.abort(rid)
        self.active.clear()
        self.pub.close()
        return left

    # ---- inbox ---------------------------------------------------------------------------
    def _read_inbox(self, block_ms: int | None) -> None:
        try:
            batches = read_entries(self.r, self.id, count=16, block_ms=block_ms)
        except redis.exceptions.ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            self.ensure_group()
            return
        if not batches:
            return
        # Every request read is taken (START) in one round trip, not one each: a batch of 32
        # reaches its first step that much sooner.
        now = time.time()
        batch = self.broker.batch()
        for entry in batches:
            for rid in entry.request_ids:
                batch.start(rid, worker=self.id)
        started = iter(batch.execute())
        for entry in batches:
            eid = entry.entry_id
            starts = [(rid, next(started)) for rid in entry.request_ids]
            taken = [rid for rid, st in starts if st is not None]
            self.pub.submit(lambda e=eid, t=taken, w=self.id: self.entries.opened(w, e, t))
            for rid, st in starts:
                self._admit(eid, rid, st, now)

    def _admit(self, eid: str, rid: str, started: Started | None, now: float) -> None:
        """Hand a request to the engine; `started` is what START returned for it (None: it was
        cancelled meanwhile, or is no longer ours)."""
        if started is None:
            return
        attempt, t_enq, deadline = started.attempt, started.enqueued_at or now, started.deadline
        opts = pb.StreamOptions.FromString(started.options)
        compiling = False
        try:  # as the scheduler validated it; the engine checks what needs the model, once
            adm = started.admission
            if adm is None:
                raise ValueError("the stored request holds no admission this worker can read")
            self.faults.on_admit(rid, adm.prompt)
            sp = adm.sampling_params
            if self.engine.has_request(rid):
                self.engine.abort(rid)  # a stale attempt of this request still ran here
            admission = dict(
                prompt=adm.prompt,
                sampling_params=sp,
                sparse_config=adm.sparse_config,
                provisional=opts.provisional,
            )
            compiling = self.compiles.wanted(sp)
            if compiling:  # it waits for its automaton; the engine takes it once compiled
                self.compiles.submit(rid, sp, admission)
            else:
                self.engine.add_request(rid, **admission)
        except Exception as e:
            self._refuse(rid, eid, attempt, e)
            return
        canvas = (
            CanvasRenderer(self.engine.decode, sp.gen_length, opts.mask_placeholder)
            if opts.include_canvas
            else None
        )
        self.active[rid] = RunningRequest(
            rid,
            attempt,
            eid,
            t_enq,
            now,
            deadline,
            canvas,
            opts.include_token_texts,
            provisional=opts.provisional,
        )
        if not compiling:
            self.observe.admitted(rid, attempt, t_enq, now)

    def _enter_compiled(self) -> None:
        """Hand the requests whose structured output compiled to the engine (or end them with
        the compile's error)."""
        for rid, admission, error in self.compiles.ready():
            a = self.active.get(rid)
            if a is None:
                continue  # cancelled or expired meanwhile
            try:
                if error is not None:
                    raise error
                self.engine.add_request(rid, **admission)
            except Exception as e:
                self._refuse(rid, a.entry_id, a.attempt, e)
                continue
            self.observe.admitted(rid, a.attempt, a.t_enq, time.time())

    def _refuse(self, rid: str, eid: str, attempt: int, e: Exception) -> None:
        """End a request its admission refused: INVALID_ARGUMENT naming the field, or
        RESOURCE_EXHAUSTED; anything else is a bug, which must not take the worker down."""
        if isinstance(e, ValidationError):
            self._fail(rid, eid, attempt, rk.FAILED, "INVALID_ARGUMENT", e.reason, e.field)
        elif isinstance(e, CapacityError):
            self._fail(rid, eid, attempt, rk.FAILED, "RESOURCE_EXHAUSTED", str(e))
        else:
            fields = {EVENT_ATTR: {"request_id": rid, "attempt": attempt}}
            log.error("admission failed", extra=fields, exc_info=e)
            self._fail(rid, eid, attempt, rk.FAILED, "INTERNAL", f"admission failed: {e}")

    # ---- cancellation and deadlines --------------------------------------------------------
    def _read_ctl(self) -> None:
        reply = self.r.xread({rk.ctl_key(self.id): self._ctl_last}, count=256)
        for _key, entries in reply or []:
            for entry_id, fields in entries:
                self._ctl_last = rk.text(entry_id)
                rid = rk.text(fields.get(b"id"))
                a = self.active.get(rid)
                if a is None:
                    continue
                self.engine.abort(rid)
                code = rk.text(fields.get(b"code")) or "CANCELLED"
                msg = rk.text(fields.get(b"msg")) or "cancelled"
                self._fail(rid, a.entry_id, a.attempt, rk.CANCELLED, code, msg)

    def _check_deadlines(self) -> None:
        now = time.time()
        for a in [a for a in self.active.values() if a.deadline and now > a.deadline]:
            self.engine.abort(a.request_id)
            self._fail(
                a.request_id,
                a.entry_id,
                a.attempt,
                rk.EXPIRED,
                "DEADLINE_EXCEEDED",
                "deadline exceeded",
            )

    def _fail(
        self, rid: str, eid: str, attempt: int, status: str, code: str, msg: str, field: str = ""
    ) -> None:
        self.active.pop(rid, None)
        self.compiles.drop(rid)
        self.observe.ended(rid, attempt, status, code, msg)
        worker = self.id

        def job() -> None:
            self.broker.finish(
                rid,
                worker=worker,
                attempt=attempt,
                status=status,
                final=Failure(code, msg, field),
            )
            self.entries.ended(eid, rid)

        self.pub.submit(job)

    # ---- results ---------------------------------------------------------------------------
    def _publish(self, updates: list[StepOutput]) -> None:
        """Hand an iteration's updates to the publisher; finished requests leave `active` now."""
        items = []
        for u in updates:
            a = self.active.get(u.request_id)
            if a is None:
                continue  # aborted in this pass
            if u.finished:
                del self.active[u.request_id]
            items.append((a, u))
        if items:
            self.pub.submit(lambda: self._write_steps(items))

    def _write_steps(self, items: list[tuple[RunningRequest, StepOutput]]) -> None:
        now = time.time()
        steps: list[StepRecord] = []
        finished: list[tuple[RunningRequest, StepOutput]] = []
        for a, u in items:
            canvas = a.canvas.apply(u.positions, u.token_ids) if a.canvas is not None else ""
            msg = pb.StepUpdate(
                step=u.step,
                total_steps=u.total_steps,
                block_index=u.block_index,
                positions=u.positions,
                token_ids=u.token_ids,
                masked_left=u.masked_left,
                text_delta=u.text_delta,
                canvas=canvas,
                attempt=a.attempt,
                token_texts=[self.engine.decode([t]) for t in u.token_ids] if a.token_texts else [],
                provisional=provisional_tokens(u.provisional, self.engine.decode, a.token_texts),
                edits=token_edits(u.edits, self.engine.decode, a.token_texts),
                block_done=u.block_done,
            )
            first = not a.t_first
            if first:
                a.t_first = now
                self.observe.first_step(a.request_id, a.attempt, a.t_enq, now)
            steps.append(StepRecord(u.request_id, a.attempt, msg.SerializeToString(), first=first))
            if u.finished and u.output is not None:
                finished.append((a, u))
        batch = self.broker.batch()
        if steps:
            batch.publish_steps(steps)
        for a, u in finished:  # after its last step record: the same connection keeps order
            done = completed(a, u, now, self.id)
            self.observe.completed(done)
            batch.finish(
                a.request_id,
                worker=self.id,
                attempt=a.attempt,
                status=rk.DONE,
                final=Completion(done.SerializeToString()),
            )
        batch.execute()
        for a, _u in finished:
            self.entries.ended(a.entry_id, a.request_id)
