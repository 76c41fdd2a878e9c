"""The constrained DP against brute-force enumeration on tiny vocabularies and automata: the
assignment it returns is the best-scoring one after which the canvas can still be completed to
an accepted answer (then the EOS fill), as enumerating every assignment and continuation says."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tokenizers import decoders

from dllmserve import SamplingParams
from dllmserve.engine.constrained import (
    ROWS_PER_PASS,
    RequestConstraint,
    constrained_rows,
    request_constraint,
)
from dllmserve.errors import ValidationError
from dllmserve.structured import automaton
from dllmserve.structured.compiler import cache_clear, compile_constraint
from dllmserve.structured.dfa import build_byte_dfa
from dllmserve.structured.dp import best_assignment, best_assignments
from dllmserve.structured.spec import StructuredOutput
from dllmserve.structured.vocab import TokenBytes, token_bytes

torch.set_num_threads(1)
TOKENS = [b"a", b"b", b"ab", b"ba", b"c", b"abc"]
EOS = len(TOKENS)


def tiny_vocab(tokens: list[bytes] = TOKENS) -> TokenBytes:
    lengths = np.array([len(t) for t in tokens])
    return TokenBytes(
        ids=np.arange(len(tokens), dtype=np.int64),
        data=np.frombuffer(b"".join(tokens), dtype=np.uint8),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        vocab_size=len(tokens) + 1,
        stop_ids=(len(tokens),),
        fingerprint="tiny:" + ",".join(t.decode() for t in tokens),
    )


def accepted(regex: str, canvas: tuple[int, ...]) -> bool:
    """The canvas is an answer the regex matches, then only EOS."""
    end = canvas.index(EOS) if EOS in canvas else len(canvas)
    if any(t != EOS for t in canvas[end:]):
        return False
    return re.fullmatch(regex, b"".join(TOKENS[t] for t in canvas[:end]).decode()) is not None


def brute_force(regex, prefix, fixed, scores, remaining):
    """The best score over assignments of the masked positions with a completion, or None."""
    vocab = range(EOS + 1)
    masked = [i for i, f in enumerate(fixed) if f < 0]
    best = None
    for choice in itertools.product(vocab, repeat=len(masked)):
        block = list(fixed)
        for i, t in zip(masked, choice, strict=True):
            block[i] = t
        if not any(
            accepted(regex, (*prefix, *block, *rest))
            for rest in itertools.product(vocab, repeat=remaining)
        ):
            continue
        score = sum(float(scores[i, t]) for i, t in zip(masked, choice, strict=True))
        best = score if best is None else max(best, score)
    return best


CASES = [
    ("(ab)+c?", (), (-1, -1, -1), 0),
    ("(ab)+c?", (), (-1, -1, -1), 2),
    ("(ab)+c?", (2,), (-1, 1, -1), 1),
    ("a*b", (0,), (-1, -1, -1), 1),
    ("(a|bc)+", (), (-1, 4, -1), 1),
    ("ab|ba|c", (), (-1, -1, -1), 0),
    ("(abc|ba)*a", (), (-1, -1, -1, -1), 0),
    ("[abc]{2,5}", (), (-1, -1, 6, -1), 1),
]


@pytest.mark.parametrize("regex,prefix,fixed,remaining", CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dp_matches_brute_force(regex, prefix, fixed, remaining, seed):
    a = compile_constraint(StructuredOutput(regex=regex), tiny_vocab())
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn((len(fixed), EOS + 1), generator=gen) * 2
    scores[0, 1] = -torch.inf  # a forbidden token stays usable, at the floor's cost
    start = a.walk(a.start, prefix)
    want = brute_force(regex, prefix, fixed, scores.clamp(min=-1e4), remaining)
    tokens, feasible = best_assignment(a, scores, torch.tensor(fixed), start, remaining)
    assert bool(feasible) == (want is not None)
    if want is None:
        return
    tokens = tokens.tolist()
    assert all(f < 0 or t == f for t, f in zip(tokens, fixed, strict=True))
    got = sum(float(scores.clamp(min=-1e4)[i, t]) for i, t in enumerate(tokens) if fixed[i] < 0)
    assert got == pytest.approx(want, abs=1e-4)
    assert any(
        accepted(regex, (*prefix, *tokens, *rest))
        for rest in itertools.product(range(EOS + 1), repeat=remaining)
    )


def test_minimum_length_is_the_shortest_accepted_answer():
    vocab = tiny_vocab()
    for regex, shortest in [("(ab)+c?", 1), ("a{3}b", 3), ("(abc|ba)*a", 1), ("c{4}", 4)]:
        a = compile_constraint(StructuredOutput(regex=regex), vocab)
        assert a.min_length == shortest, regex


def test_committed_tokens_that_break_the_constraint_are_reported():
    a = compile_constraint(StructuredOutput(regex="(ab)+"), tiny_vocab())
    scores = torch.zeros((3, EOS + 1))
    _, feasible = best_assignment(a, scores, torch.tensor([4, -1, -1]), a.start, 0)
    assert not bool(feasible)


def test_a_constraint_no_token_sequence_writes_is_refused():
    with pytest.raises(ValidationError) as e:
        compile_constraint(StructuredOutput(regex="a+d"), tiny_vocab())
    assert e.value.field.endswith(".regex") and "no answer written" in e.value.reason


def test_a_dfa_past_its_state_limit_is_refused():
    with pytest.raises(ValidationError) as e:
        build_byte_dfa("[a-z]{20}", "f.regex", 30.0, max_states=10)
    assert e.value.field == "f.regex" and "states, over the limit 10" in e.value.reason


def test_a_compile_out_of_memory_is_refused():
    with pytest.raises(ValidationError) as e:
        build_byte_dfa("(a|b)*a(a|b){16}", "f.regex", 60.0, 10**6, memory_bytes=400 << 20)
    assert e.value.field == "f.regex" and "memory" in e.value.reason


def test_a_lift_past_its_pair_limit_is_refused(monkeypatch):
    monkeypatch.setattr(automaton, "MAX_PAIRS", 5)
    cache_clear()
    with pytest.raises(ValidationError) as e:
        compile_constraint(StructuredOutput(regex="[abc]+a"), tiny_vocab())
    assert "too large for this vocabulary" in e.value.reason


def test_colliding_token_classes_are_caught(monkeypatch):
    real = automaton._map_hash

    def first_collides(pair, tok, n_tok, salt):  # every token in one class by the first hash
        return real(pair, tok, n_tok, salt) * (salt != 0x9E3779B97F4A7C15)

    monkeypatch.setattr(automaton, "_map_hash", first_collides)
    cache_clear()
    with pytest.raises(RuntimeError, match="collided"):
        compile_constraint(StructuredOutput(regex="[abc]+b"), tiny_vocab())


def test_only_byte_level_tokenizers_are_supported():
    not_byte_level = SimpleNamespace(
        backend_tokenizer=SimpleNamespace(decoder=decoders.Metaspace())
    )
    with pytest.raises(ValidationError) as e:
        token_bytes(not_byte_level, 10, (9,), "f.regex")
    assert "byte-level" in e.value.reason and "Metaspace" in e.value.reason


def test_an_engine_without_a_tokenizer_refuses_structured_outputs():
    params = SamplingParams(structured_output=StructuredOutput(regex="a+"))
    with pytest.raises(ValidationError) as e:
        request_constraint(params, None, (1,), 10)
    assert e.value.field == "sampling_params.structured_output"


def test_a_canvas_that_left_the_automaton_is_an_error_not_a_silent_state():
    a = compile_constraint(StructuredOutput(regex="(ab)+"), tiny_vocab())
    with pytest.raises(RuntimeError, match="left the structured output's automaton"):
        RequestConstraint(a).state_at(np.array([4, 0, 1]), 2)


def test_rows_side_by_side_get_what_each_gets_alone():
    """One DP over several rows (different automata, block widths, commits, positions left)
    returns each row's own assignment."""
    vocab = tiny_vocab()
    rows = [("(ab)+c?", (-1, -1, -1, -1), 0, 4), ("a*b", (0, -1, -1, -1), 2, 3),
            ("(a|bc)+", (-1, 4, -1, -1), 1, 2), ("ab|ba|c", (-1, -1, -1, -1), 0, 1)]  # fmt: skip
    automata = [compile_constraint(StructuredOutput(regex=r), vocab) for r, *_ in rows]
    scores = torch.randn((len(rows), 4, EOS + 1), generator=torch.Generator().manual_seed(3))
    fixed = torch.tensor([f for _, f, _, _ in rows])
    widths = [w for *_, w in rows]
    for r, w in enumerate(widths):
        fixed[r, w:] = -1
    starts = [a.start for a in automata]
    lefts = [left for _, _, left, _ in rows]
    together, ok = best_assignments(automata, scores, fixed, starts, lefts, widths)
    for r, a in enumerate(automata):
        w = widths[r]
        alone, ok_r = best_assignment(a, scores[r, :w], fixed[r, :w], starts[r], lefts[r])
        assert bool(ok[r]) == bool(ok_r) and together[r, :w].tolist() == alone.tolist()


def test_a_compile_from_a_script_without_a_main_guard(tmp_path):
    """The compile child is a fresh interpreter: it does not re-run the caller's main script
    (multiprocessing's children do, which fails without a `__main__` guard)."""
    root = Path(__file__).resolve().parents[1]
    script = tmp_path / "unguarded.py"
    script.write_text(
        f"import sys\nsys.path.insert(0, {str(root)!r})\n"
        "from dllmserve.structured.dfa import build_byte_dfa\n"
        "dfa = build_byte_dfa('(ab)+', 'f.regex', 60.0, 100)\n"
        "for text in (b'abab', b'aba'):\n"
        "    s = dfa.start\n"
        "    for byte in text:\n"
        "        s = dfa.trans[s, byte]\n"
        "    print(bool(dfa.accepting[s]))\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["True", "False"]


def _request(a, mask: int, temperature: float, remasking: str, committed: dict[int, int]):
    """An engine request's fields that `constrained_rows` reads: a 4-token prompt, a block of
    4 of the 8 answer positions, `committed` {offset: token} in it."""
    canvas = np.full(12, mask, dtype=np.int64)
    for offset, token in committed.items():
        canvas[4 + offset] = token
    return SimpleNamespace(
        constraint=RequestConstraint(a), block_span=(4, 8), canvas=canvas,
        tokens=SimpleNamespace(mask=mask), generated=canvas[4:], prompt_len=4, gen_length=8,
        params=SimpleNamespace(temperature=temperature, remasking=remasking,
                               logits_eos_inf=temperature > 0, confidence_eos_eot_inf=True),
    )  # fmt: skip


def test_constrained_rows_over_several_passes_get_what_each_gets_alone():
    """`ConstrainedRows.choose` handles its rows together, a few per pass over the vocabulary:
    each row's tokens, confidences and probabilities are those it gets alone in its batch."""
    vocab = tiny_vocab()
    automata = [compile_constraint(StructuredOutput(regex=r), vocab) for r in ("(ab)+c?", "a*b")]
    mask, width = EOS + 1, 4
    modes = ("low_confidence", "maskgit_plus", "random")
    reqs = [
        _request(automata[j % 2], mask, (0.0, 0.7)[j % 2], modes[j % 3], {0: 0} if j % 4 else {})
        for j in range(2 * ROWS_PER_PASS + 1)
    ]
    batch = [None, *reqs[:5], None, *reqs[5:]]  # unconstrained rows in between
    R = len(batch)
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn((R, width, mask + 1), generator=gen) * 3
    x0, conf = logits.argmax(-1), torch.rand((R, width), generator=gen, dtype=torch.float64)
    seed, step = torch.arange(R) + 3, torch.full((R,), 2)
    positions = torch.arange(width).expand(R, width) + 4
    special = (mask, EOS, None)

    def choose(rows_of, i):
        rows = constrained_rows(rows_of, width, torch.device("cpu"))
        return rows.choose(logits[i], x0[i], conf[i], conf[i], seed[i], step[i], positions[i],
                           special)  # fmt: skip

    together = choose(batch, slice(None))
    for i, r in enumerate(batch):
        if r is not None:
            alone = choose([r], slice(i, i + 1))
            for t, a in zip(together, alone, strict=True):
                assert torch.equal(t[i], a[0])
