"""A regex's byte-level DFA, built by outlines-core in a child process with a time and memory
limit (a regex's DFA can be exponential in its length, and the library cannot be interrupted).

outlines-core's `Index` over single-byte tokens is the DFA. Its index drops a token that ends
one byte past a match unless the text is a match again (so `(ab)+` would refuse "abab"); the
regex is therefore compiled as `(?:R)\\x00`: the NUL terminator is the only byte that can end a
match, and a state accepts R exactly when NUL leads it to a final state. NUL is never part of
an answer (`TokenBytes` drops tokens that hold it).
"""

from __future__ import annotations

import multiprocessing
import resource
from dataclasses import dataclass

import numpy as np

from dllmserve.errors import ValidationError

TERMINATOR = 256  # the NUL terminator's token id in the child's single-byte vocabulary
CHILD_MEMORY_BYTES = 4 << 30


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
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])  # the children fork with numpy already imported
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(regex, max_states, memory_bytes, send), daemon=True)
    child.start()
    send.close()
    try:
        if not recv.poll(timeout_s):
            raise ValidationError(
                field, f"compiling it took over the time limit ({timeout_s:.3g} s): simplify it"
            )
        kind, payload = recv.recv()
    except EOFError:
        raise ValidationError(field, "compiling it ran out of memory: simplify it") from None
    finally:
        recv.close()
        if child.is_alive():
            child.kill()
        child.join()
    if kind == "error":
        raise ValidationError(field, payload)
    trans, start, accepting = payload
    return ByteDFA(trans, start, accepting)


def _child(regex: str, max_states: int, memory_bytes: int, conn) -> None:
    """Runs in the child: compile, then send ("ok", (trans, start, accepting)) or ("error",
    reason)."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    try:
        conn.send(("ok", _compile(regex, max_states)))
    except ValueError as e:
        reason = str(e).strip().splitlines()[-1][:300]
        conn.send(
            (
                "error",
                f"cannot be compiled (Rust regex syntax, without look-around or "
                f"backreferences): {reason}",
            )
        )
    except _TooLarge as e:
        conn.send(("error", str(e)))
    except MemoryError:
        conn.send(("error", "compiling it ran out of memory: simplify it"))
    finally:
        conn.close()


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
