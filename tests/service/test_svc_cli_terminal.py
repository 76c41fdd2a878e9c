"""`dllmserve serve --demo` on a terminal (a pseudo-terminal, rendered by the pyte terminal
emulator): the canvas is redrawn step by step in colour with the step counter, tokens/s and
elapsed time, and what stays on the screen is the answer, once. The children's INFO log lines
print above the live view, whole, never into the canvas."""

from __future__ import annotations

import os
import re
import sys

import pexpect
import pyte

from dllmserve.assets import tasks

ROWS, COLS = 120, 160  # tall enough to keep the question, the logs and the answer on screen
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) \S+: ")
ANSWER = tasks.demo().answer  # the demo model looks the demo's code up


def test_live_view_redraws_the_canvas_and_leaves_the_answer_once(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TERM": "xterm-256color",
           "DLLMSERVE_CACHE": str(tmp_path)}  # fmt: skip
    for var in ("NO_COLOR", "COLUMNS", "LINES"):
        env.pop(var, None)
    child = pexpect.spawn(
        sys.executable,
        ["-m", "dllmserve.cli", "--log-level", "INFO", "serve", "--listen", "127.0.0.1:0",
         "--demo", "--exit-after-demo", "--max-num-seqs", "4"],
        env=env, dimensions=(ROWS, COLS), timeout=300,
    )  # fmt: skip
    screen = pyte.Screen(COLS, ROWS)
    stream = pyte.ByteStream(screen)
    raw, masked = b"", {}  # step -> masked positions drawn under its header
    while True:
        try:
            chunk = child.read_nonblocking(65536, timeout=300)
        except pexpect.EOF:
            break
        raw += chunk
        stream.feed(chunk)
        text = "\n".join(screen.display)
        for step in re.findall(r"step (\d+)/32", text):  # a chunk may end mid-frame: keep the max
            masked[int(step)] = max(masked.get(int(step), 0), text.count("░"))
    child.close()
    assert child.exitstatus == 0, raw.decode(errors="replace")[-3000:]

    steps = {int(n) for n in re.findall(rb"step (\d+)/32", raw)}
    assert {1, 32} <= steps and len(steps) >= 16, steps  # the header followed the steps
    assert b"tokens/s" in raw and re.search(rb"\d+\.\d s", raw)  # rate and elapsed time
    assert b"\x1b[1;32m" in raw and b"\x1b[2m" in raw  # this step's tokens green, masks dim
    counts = [masked[k] for k in sorted(masked)]
    assert counts[0] > 0 and counts == sorted(counts, reverse=True), counts  # the canvas fills
    final = "\n".join(line.rstrip() for line in screen.display)
    question = tasks.demo().question.splitlines()[-1]  # the demo's prompt is shown first
    assert final.count(question) == 1, final
    answered = final.split(question)[1]
    assert answered.count(ANSWER) == 1, final  # the live canvas is gone; the answer stays once
    assert "░" not in final and not re.search(r"step \d+/32", final)
    logs = [line for line in final.splitlines() if " INFO " in line]
    assert any("dllmserve.worker" in line for line in logs), final  # the children's lines...
    assert all(LOG_LINE.match(line) for line in logs), logs  # ...each whole, on a line of its own
