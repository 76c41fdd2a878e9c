"""What `dllmserve generate` shows while a generation streams.

`LiveView` (a terminal): the canvas redrawn in place at every step, coloured by what the step
did (committed this step / earlier / still masked), under a line with the step, tokens/s and
elapsed time and a strip of one cell per canvas position (so that end-of-text tokens, which
render as nothing, still show as they fill the canvas); when the answer is complete the live
area is cleared and the answer printed once.
`PlainView` (a pipe or a file, or --no-live): one progress line per step on stderr unless quiet,
then the answer on stdout. Both print the request's acceptance and a summary on stderr.
"""

from __future__ import annotations

import re
import sys
import time
from difflib import SequenceMatcher

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from dllmserve.client import Accepted, Completed, Event, StepUpdate

MASK = "░"  # the placeholder the service renders for a masked position
NEW, EARLIER, MASKED = "bold green", "default", "dim"


def canvas_text(before: str, now: str) -> Text:
    """`now` with what changed since `before` in NEW, the rest in EARLIER, masks in MASKED."""
    text = Text()
    for op, _, _, lo, hi in SequenceMatcher(None, before, now, autojunk=False).get_opcodes():
        style = EARLIER if op == "equal" else NEW
        for part in re.split(f"({MASK}+)", now[lo:hi]):
            if part:
                text.append(part, MASKED if part[0] == MASK else style)
    return text


def position_strip(gen_length: int, earlier: set[int], now: set[int]) -> Text:
    """One cell per canvas position: committed this step, earlier, or masked."""
    text = Text()
    for i in range(gen_length):
        if i in now:
            text.append("█", NEW)
        elif i in earlier:
            text.append("█", EARLIER)
        else:
            text.append(MASK, MASKED)
    return text


class _View:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.err = Console(stderr=True, highlight=False)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def progress(self, upd: StepUpdate, gen_length: int) -> str:
        committed = gen_length - upd.masked_left
        rate = committed / max(self.elapsed(), 1e-6)
        retry = f"  attempt {upd.attempt}" if upd.attempt > 1 else ""
        return (
            f"step {upd.step}/{upd.total_steps}{retry}  {upd.masked_left} masked  "
            f"{rate:.1f} tokens/s  {self.elapsed():.1f} s"
        )

    def accepted(self, ev: Accepted) -> None:
        self.err.print(f"request {ev.request_id} accepted", markup=False)

    def completed(self, done: Completed) -> None:
        sys.stdout.write(done.text + "\n")
        sys.stdout.flush()
        u, t = done.usage, done.timings
        rate = u.generated_tokens / max(t.total_ms / 1000, 1e-6)
        self.err.print(
            f"[{done.finish_reason}; {u.generated_tokens} tokens, {u.steps} steps, "
            f"{t.total_ms:.0f} ms, {rate:.1f} tokens/s]",
            markup=False,
        )

    def close(self) -> None:
        pass


class PlainView(_View):
    def __init__(self, gen_length: int, quiet: bool = False) -> None:
        super().__init__()
        self.gen_length, self.quiet = gen_length, quiet

    def show(self, ev: Event) -> None:
        if isinstance(ev, Accepted):
            self.accepted(ev)
        elif isinstance(ev, StepUpdate) and not self.quiet:
            self.err.print(self.progress(ev, self.gen_length), markup=False)
        elif isinstance(ev, Completed):
            self.completed(ev)


class LiveView(_View):
    def __init__(self, gen_length: int) -> None:
        super().__init__()
        self.gen_length = gen_length
        self.canvas, self.attempt, self.committed = "", 0, set()
        self.live = Live(Text(""), console=Console(), auto_refresh=False, transient=True)
        self.live.start()

    def show(self, ev: Event) -> None:
        if isinstance(ev, Accepted):
            self.accepted(ev)
        elif isinstance(ev, StepUpdate):
            if ev.attempt != self.attempt:  # a retry on another worker starts over
                self.canvas, self.attempt, self.committed = "", ev.attempt, set()
            now = set(ev.positions)
            self.live.update(
                Group(
                    Text(self.progress(ev, self.gen_length), style="bold"),
                    position_strip(self.gen_length, self.committed, now),
                    canvas_text(self.canvas, ev.canvas),
                ),
                refresh=True,
            )
            self.canvas, self.committed = ev.canvas, self.committed | now
        elif isinstance(ev, Completed):
            self.close()
            self.completed(ev)

    def close(self) -> None:
        self.live.stop()
