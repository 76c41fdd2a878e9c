"""The segmented max of structured outputs (`kernels.segment_argmax`) against its reference, and
the class-ordered layout the DP builds for it (`structured.dp`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from kernel_testlib import DEVICE

from dllmserve import kernels
from dllmserve.kernels import reference
from dllmserve.structured import dp

torch.set_num_threads(1)
FLOOR = -1e4


def layout(class_of: np.ndarray, width: int):
    order, bounds, segment_class = dp._segments(class_of, width)
    return torch.from_numpy(order), torch.from_numpy(bounds), torch.from_numpy(segment_class)


def scores_with_ties(k: int, n: int, vocab: int, seed: int) -> torch.Tensor:
    """Random scores on a coarse grid (many exact ties), some -inf and some under the floor."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(-6, 3, (k, n, vocab), generator=g).float()
    s[torch.rand(k, n, vocab, generator=g) < 0.1] = -torch.inf
    s[torch.rand(k, n, vocab, generator=g) < 0.05] = -3e4  # floored to FLOOR: ties with -inf
    return s


@pytest.mark.parametrize("segment", [5, 64, 4096])
def test_kernel_matches_reference(monkeypatch, segment):
    """Two layouts (one class holds most of the vocabulary, as a JSON string's does; empty
    classes; padded segments), rows sharing a layout, ties everywhere: the same bits."""
    monkeypatch.setattr(dp, "SEGMENT", segment)
    vocab, width = 2500, 9
    rng = np.random.default_rng(segment)
    big = np.where(rng.random(vocab) < 0.8, 3, rng.integers(0, 7, vocab))  # 7, 8: empty
    small = rng.integers(0, 4, vocab)
    order, bounds, _ = layout(np.stack([big, small]), width)
    table = torch.tensor([0, 1, 0])
    s = scores_with_ties(3, 4, vocab, seed=segment)
    on = [x.to(DEVICE) for x in (s, order, bounds, table)]
    best, arg = kernels.segment_argmax(*on, FLOOR)
    ref_best, ref_arg = reference.segment_argmax(s, order, bounds, table, FLOOR)
    assert best.dtype == torch.float32 and arg.dtype == torch.int32
    assert torch.equal(best.cpu(), ref_best) and torch.equal(arg.cpu(), ref_arg)


def test_reference_is_the_per_class_max():
    """The reference against a plain loop: per class, the floored max and its lowest id."""
    vocab, width = 300, 6
    class_of = np.random.default_rng(0).integers(0, width - 1, vocab)  # class 5 empty
    order, bounds, segment_class = layout(class_of[None], width)
    s = scores_with_ties(2, 3, vocab, seed=1)
    best, arg = reference.segment_argmax(s, order, bounds, torch.tensor([0, 0]), FLOOR)
    for r in range(2):
        for p in range(3):
            for t, c in enumerate(segment_class[0].tolist()):
                lo, hi = bounds[0, t].tolist()
                ids = order[0, lo:hi].long()
                if len(ids) == 0:
                    assert best[r, p, t] == -torch.inf and arg[r, p, t] == vocab
                    continue
                assert set(class_of[ids.numpy()]) == {c}
                v = s[r, p, ids].clamp(min=FLOOR)
                assert best[r, p, t] == v.max()
                assert arg[r, p, t] == ids[v == v.max()].min()


def test_layout_cuts_classes_into_segments(monkeypatch):
    """Every id once, in class order, ascending within a class; no segment spans two classes
    or exceeds SEGMENT ids; padding segments are empty."""
    monkeypatch.setattr(dp, "SEGMENT", 16)
    rng = np.random.default_rng(3)
    class_of = np.stack([rng.integers(0, 5, 200), np.where(rng.random(200) < 0.9, 1, 0)])
    order, bounds, segment_class = layout(class_of, 6)
    for d in range(2):
        assert sorted(order[d].tolist()) == list(range(200))
        covered = []
        for (lo, hi), c in zip(bounds[d].tolist(), segment_class[d].tolist(), strict=True):
            assert 0 <= hi - lo <= 16
            ids = order[d, lo:hi].numpy()
            assert (class_of[d, ids] == c).all() and (np.diff(ids) > 0).all()
            covered += ids.tolist()
        assert sorted(covered) == list(range(200))
    assert (bounds[1, -1, 0] == bounds[1, -1, 1]).item()  # the shorter layout is padded


def test_class_scores_same_with_kernel_and_reference(monkeypatch):
    """The DP's per-class scores through the Triton kernel (on the GPU where there is one)
    equal those through the reference."""
    from dllmserve.structured.automaton import TokenAutomaton

    monkeypatch.setattr(dp, "SEGMENT", 7)
    vocab = 40
    rng = np.random.default_rng(5)
    automata = [_automaton(TokenAutomaton, rng, vocab, n_classes=c) for c in (3, 5)]
    s = scores_with_ties(2, 6, vocab, seed=7)
    fixed = torch.tensor([[-1, 4, -1, -1, -1, -1], [-1, -1, -1, 2, -1, -1]])
    args = (torch.arange(2), s, fixed, torch.tensor([6, 4]))
    on_device = [x.to(DEVICE) for x in args]
    with_kernel = dp.class_scores(dp.graph(automata, vocab, DEVICE), *on_device)
    monkeypatch.setattr(kernels, "force_triton", False)
    with_reference = dp.class_scores(dp.graph(automata, vocab, torch.device("cpu")), *args)
    for a, b in zip(with_kernel, with_reference, strict=True):
        assert torch.equal(a.cpu(), b)


def _automaton(cls, rng, vocab: int, n_classes: int):
    """A small random automaton: two states, every class an edge from each."""
    class_of = rng.integers(-1, n_classes, vocab)
    src = np.repeat(np.arange(2), n_classes)
    return cls(
        class_of=class_of,
        n_classes=n_classes,
        n_states=2,
        start=0,
        src=src,
        cls=np.tile(np.arange(n_classes), 2),
        dst=(src + 1) % 2,
        dist=np.zeros(2, dtype=np.int64),
    )


def test_bad_inputs_name_the_argument():
    s = torch.zeros(1, 2, 10, device=DEVICE)
    order = torch.arange(10, dtype=torch.int32, device=DEVICE)[None]
    bounds = torch.tensor([[[0, 10]]], dtype=torch.int32, device=DEVICE)
    table = torch.tensor([0], device=DEVICE)
    with pytest.raises(ValueError, match="scores"):
        kernels.segment_argmax(s.double(), order, bounds, table, FLOOR)
    with pytest.raises(ValueError, match="order"):
        kernels.segment_argmax(s, order.long(), bounds, table, FLOOR)
    with pytest.raises(ValueError, match="bounds"):
        kernels.segment_argmax(s, order, bounds[..., :1], table, FLOOR)
    with pytest.raises(ValueError, match="table"):
        kernels.segment_argmax(s, order, bounds, torch.tensor([0, 0], device=DEVICE), FLOOR)
