"""`dllmserve serve`'s child processes: started, watched, restarted, stopped together.

A worker that dies (the OOM killer, a crashing request) is restarted after a back-off of 1 s,
doubling up to 30 s; the scheduler re-delivers its requests once its heartbeat expires, as in a
cluster. A worker that dies again within `STABLE_S` of its start is crash-looping: after
`max_restarts` restarts in a row, serve gives up. A worker that exits with `OPERATOR_EXIT`
refused how it was started (its own line says which setting): it would refuse again, so serve
stops at once. The scheduler and the gateway are not restarted: their death ends serve. Every
death is one line naming the child and its exit status.

Each child's output (its log lines and ready marker) is relayed line by line to a log file, or to
this process's `sys.stderr`, looked up at every line: while the live view is up that is rich's
proxy, which prints above the live area, so a log line never lands in the canvas.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO

from dllmserve.cli.common import OPERATOR_EXIT
from dllmserve.logs import emit

STABLE_S = 60.0  # a worker up this long was not crash-looping: its restart count starts over
MAX_BACKOFF_S = 30.0


class ChildFailed(Exception):
    """A child died for good (one that is not restarted, or a worker past its restarts)."""


@dataclass
class Child:
    """One child process; `argv` is called at every start (a restart may need a fresh port)."""

    name: str
    argv: Callable[[], list[str]]
    env: dict[str, str]
    restart: bool = False
    proc: subprocess.Popen | None = None
    started: float = 0.0
    restarts: int = 0  # in a row, without a stable run between them
    due: float | None = None  # when a pending restart starts it
    threads: list[threading.Thread] = field(default_factory=list)


def exit_status(returncode: int) -> str:
    """'exited with status 2' or 'was killed by SIGKILL'."""
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


class Supervisor:
    """Starts children, restarts dead workers, raises ChildFailed when serve must stop."""

    def __init__(self, max_restarts: int, log_file: IO[str] | None = None) -> None:
        self.max_restarts = max_restarts
        self.log_file = log_file
        self.children: list[Child] = []
        self._write = threading.Lock()

    def start(self, child: Child) -> Child:
        if child not in self.children:
            self.children.append(child)
        child.proc = subprocess.Popen(
            child.argv(), env=child.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        child.started, child.due = time.monotonic(), None
        relay = threading.Thread(
            target=self._relay, args=(child.proc,), daemon=True, name=f"relay {child.name}"
        )
        relay.start()
        child.threads = [relay]
        return child

    def _relay(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            with self._write:
                out = self.log_file or sys.stderr
                print(line, file=out, flush=True)

    def check(self) -> None:
        """Restart the workers that died (after their back-off); ChildFailed when one is
        past its restarts or a child that is not restarted died."""
        now = time.monotonic()
        for child in self.children:
            if child.due is not None:
                if now >= child.due:
                    self.start(child)
                continue
            code = child.proc.poll() if child.proc is not None else None
            if code is None:
                continue
            self._died(child, code, now)

    def _died(self, child: Child, code: int, now: float) -> None:
        for t in child.threads:
            t.join(timeout=2)  # its last lines (the reason it died) come before ours
        pid, status = child.proc.pid, exit_status(code)
        if not child.restart:
            raise ChildFailed(f"the {child.name} (pid {pid}) {status}; stopping")
        if code == OPERATOR_EXIT:
            raise ChildFailed(
                f"{child.name} (pid {pid}) {status}: it refused how it was started (its own "
                "log line says why); a restart would refuse again, stopping"
            )
        if now - child.started >= STABLE_S:
            child.restarts = 0
        if child.restarts >= self.max_restarts:
            raise ChildFailed(
                f"{child.name} (pid {pid}) {status} after {child.restarts} restarts in a row; "
                "giving up"
            )
        delay = min(MAX_BACKOFF_S, 2.0**child.restarts)
        child.restarts += 1
        child.due = now + delay
        emit(
            f"dllmserve serve: {child.name} (pid {pid}) {status}; restarting it in {delay:.0f} s "
            f"(restart {child.restarts} of at most {self.max_restarts})",
            stream=sys.stderr,
            level="WARNING",
        )

    @contextlib.contextmanager
    def watching(self, interval_s: float = 0.5) -> Iterator[None]:
        """check() on a thread while the caller is busy (the demo's stream); a ChildFailed it
        met is raised when the block ends."""
        done, failed = threading.Event(), []

        def watch() -> None:
            while not done.wait(interval_s):
                try:
                    self.check()
                except ChildFailed as e:
                    failed.append(e)
                    return

        thread = threading.Thread(target=watch, name="watch children", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()
        if failed:
            raise failed[0]

    def stop(self, timeout_s: float) -> None:
        """SIGTERM every child (they drain), SIGKILL the ones still there after timeout_s."""
        running = [c.proc for c in self.children if c.proc is not None and c.proc.poll() is None]
        for p in running:
            p.send_signal(signal.SIGTERM)
        for p in running:
            try:
                p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for c in self.children:
            for t in c.threads:
                t.join(timeout=2)
