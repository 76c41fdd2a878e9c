"""A regex's byte-level DFA, built by outlines-core in a child process with a time and memory
limit (a regex's DFA can be exponential in its length, and the library cannot be interrupted).
The child is a fresh interpreter that imports only this module: a fork of the server (threads,
CUDA) is unsafe, and multiprocessing's spawn and forkserver children re-import the parent's
main script (seconds of torch imports for an engine's script, and an error for one without a
`__main__` guard).

outlines-core's `Index` over single-byte tokens is the DFA. Its index drops a token that ends
one byte past a match unless the text is a match again (so `(ab)+` would refuse "abab"); the
regex is therefore compiled as `(?:R)\\x00`: the NUL terminator is the only byte that can end a
match, and a state accepts R exactly when NUL leads it to a final state. NUL is never part of
an answer (`TokenBytes` drops tokens that hold it).
"""

from __future__ import annotations

import pickle
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dllmserve.errors import ValidationError

TERMINATOR = 256  # the NUL terminator's token id in the child's single-byte vocabulary
CHILD_MEMORY_BYTES = 4 << 30
ROOT = Path(__file__).resolve().parents[2]  # the folder holding the dllmserve package
CHILD = (
    "import sys; sys.path.insert(0, {root!r}); "
    "from dllmserve.structured.dfa import serve_one; serve_one()"
)


@dataclass(frozen=True)
class ByteDFA:
    trans: np.ndarray  # int32 [S, 256]: next state per byte, -1 where the byte is refused
    start: int
    accepting: np.ndarray  # bool [S]: the bytes read so far match the regex


def build_byte_dfa(
    regex: str,
    field: str,
    timeout_s: float,
    max_states: int,
    memory_bytes: int = CHILD_MEMORY_BYTES,
) -> ByteDFA:
    """The DFA of `regex` (full-match semantics). Raises ValidationError naming `field` when the
    library cannot compile it, or it takes over `timeout_s`, needs over `memory_bytes` or has
    over `max_states` states."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(root=str(ROOT))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        out, _ = child.communicate(pickle.dumps((regex, max_states, memory_bytes)), timeout_s)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        raise ValidationError(
            field, f"compiling it took over the time limit ({timeout_s:.3g} s): simplify it"
        ) from None
    if not out:  # the child died: past its memory limit
        raise ValidationError(field, "compiling it ran out of memory: simplify it")
    kind, payload = pickle.loads(out)
    if kind == "error":
        raise ValidationError(field, payload)
    trans, start, accepting = payload
    return ByteDFA(trans, start, accepting)


def serve_one() -> None:
    """The child's main: (regex, max_states, memory_bytes) pickled on stdin; ("ok", (trans,
    start, accepting)) or ("error", reason) pickled on stdout."""
    regex, max_states, memory_bytes = pickle.load(sys.stdin.buffer)
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    try:
        result = ("ok", _compile(regex, max_states))
    except ValueError as e:
        reason = str(e).strip().splitlines()[-1][:300]
        result = (
            "error",
            "cannot be compiled (Rust regex syntax, without look-around or "
            f"backreferences): {reason}",
        )
    except _TooLarge as e:
        result = ("error", str(e))
    except MemoryError:
        result = ("error", "compiling it ran out of memory: simplify it")
    sys.stdout.buffer.write(pickle.dumps(result))


class _TooLarge(Exception):
    pass


def _compile(regex: str, max_states: int) -> tuple[np.ndarray, int, np.ndarray]:
    from outlines_core import Index, Vocabulary

    tokens: dict[bytes, list[int]] = {bytes([b]): [b] for b in range(1, 256)}
    tokens[b"\x00"] = [TERMINATOR]
    index = Index(f"(?:{regex})\\x00", Vocabulary(TERMINATOR + 1, tokens))
    table = index.get_transitions()
    finals = set(index.get_final_states())
    ids = sorted({s for s in table} | {t for m in table.values() for t in m.values()})
    if len(ids) > max_states:
        raise _TooLarge(f"its automaton has {len(ids)} states, over the limit {max_states}")
    number = {s: i for i, s in enumerate(ids)}
    trans = np.full((len(ids), 256), -1, dtype=np.int32)
    accepting = np.zeros(len(ids), dtype=bool)
    for s, moves in table.items():
        for byte, t in moves.items():
            if 1 <= byte < 256:
                trans[number[s], byte] = number[t]
            elif byte == TERMINATOR and t in finals:
                accepting[number[s]] = True
    return trans, number[index.get_initial_state()], accepting
