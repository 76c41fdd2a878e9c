"""Triton selection (scores, max-pool, top-k, page store) vs the PyTorch reference."""

from __future__ import annotations

import pytest
import torch
from kernel_testlib import DTYPES, ON_GPU, cu, page_table, randint, randn

import dllmserve.kernels as K
from dllmserve.kernels import reference

CASES = [
    # (H, Hkv, D, sequence lengths, (window start, window length), head_select, pool kernel)
    (4, 4, 64, [10], [(2, 4)], [True], [3]),
    (
        4,
        2,
        64,
        [10, 7, 4, 9],
        [(2, 4), (5, 2), (0, 4), (8, 1)],
        [True, False, True, False],
        [3, 1, 5, 3],
    ),
    (7, 1, 64, [40, 33], [(8, 8), (0, 16)], [True, False], [3, 5]),
    (28, 4, 128, [70], [(32, 32)], [True], [7]),
    (2, 2, 128, [600, 2], [(300, 32), (0, 2)], [False, True], [3, 3]),
    (7, 1, 8, [30, 12], [(4, 8), (0, 4)], [True, False], [3, 1]),
    (4, 2, 24, [25], [(9, 8)], [True], [5]),
]
if ON_GPU:
    CASES += [
        (
            32,
            32,
            128,
            [2048, 700, 4096],
            [(1024, 32), (600, 32), (4064, 32)],
            [True, False, True],
            [3, 3, 5],
        ),
        (28, 4, 128, [8192, 1000], [(32, 32), (900, 32)], [True, True], [3, 1]),
    ]


def run_both(h, hkv, d, lens, wins, hs, pk, ratio, dtype, integer, seed):
    gen = torch.Generator().manual_seed(seed)
    draw = randint if integer else randn
    cw = cu([w[1] for w in wins])
    q_win = draw(gen, int(cw[-1]), h, d, dtype=dtype)
    k_seq, v_seq = (draw(gen, sum(lens), hkv, d, dtype=dtype) for _ in range(2))
    n_c = [n - w[1] for n, w in zip(lens, wins, strict=True)]
    keep = [min(max(1, int(n * ratio)), n) for n in n_c]
    page_size = 8
    needed = [-(-n // page_size) for n in keep]
    num_pages = sum(needed) + 2
    pools = [randn(gen, num_pages, page_size, hkv, d, dtype=dtype) for _ in range(2)]
    dev = q_win.device

    def i32(xs):
        return torch.tensor(xs, dtype=torch.int32, device=dev)

    table = page_table(gen, needed, num_pages)
    common = (
        q_win,
        cw,
        k_seq,
        v_seq,
        cu(lens),
        i32([w[0] for w in wins]),
        i32([w[1] for w in wins]),
        i32(keep),
        torch.tensor(hs, device=dev),
        i32(pk),
    )
    ours = [p.clone() for p in pools]
    refs = [p.clone() for p in pools]
    max_keep = max(keep) + 3

    def args(k_pool, v_pool):
        q, cw_, ks, vs, cs, ws, wl, nk, hsel, pkt = common
        return K.SelectionArgs(
            q_win=q, cu_win=cw_, k_seq=ks, v_seq=vs, cu_seq=cs, win_start=ws, win_len=wl,
            n_keep=nk, head_select=hsel, pool_kernel=pkt, k_pool=k_pool, v_pool=v_pool,
            page_table=table, scale=d**-0.5, max_keep=max_keep,
        )  # fmt: skip

    got = K.select_and_store(args(*ours))
    want = reference.select_and_store(args(*refs))
    return got, want, ours, refs, common, table


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("h,hkv,d,lens,wins,hs,pk", CASES)
def test_selection_exact_on_integer_inputs(h, hkv, d, lens, wins, hs, pk, dtype):
    """Integer inputs make every score exact, so positions and pages must match bit for bit;
    the many equal scores exercise the lower-index tie-break."""
    got, want, ours, refs, *_ = run_both(h, hkv, d, lens, wins, hs, pk, 0.3, dtype, True, 7)
    assert torch.equal(got, want)
    assert torch.equal(ours[0], refs[0]) and torch.equal(ours[1], refs[1])


@pytest.mark.parametrize("ratio", [0.5, 1.0])
@pytest.mark.parametrize("h,hkv,d,lens,wins,hs,pk", CASES)
def test_selection_random_inputs(h, hkv, d, lens, wins, hs, pk, ratio):
    """Random inputs: positions match unless two pooled scores tie within rounding; the kept
    set is then equally good, sorted, and its K/V is what the pages hold."""
    dtype = DTYPES[0]
    got, want, ours, _, common, table = run_both(
        h, hkv, d, lens, wins, hs, pk, ratio, dtype, False, 3
    )
    q_win, cw, k_seq, v_seq, cs, ws, wl, nk, hsel, pkt = common
    for r in range(len(lens)):
        n = int(nk[r])
        assert (got[r, :, n:] == -1).all()
        if n == 0:
            continue
        a, b = slice(int(cs[r]), int(cs[r + 1])), slice(int(cw[r]), int(cw[r + 1]))
        pos = reference.candidate_positions(lens[r], int(ws[r]), int(wl[r]), k_seq.device)
        scores = reference.selection_scores(q_win[b], k_seq[a][pos], bool(hsel[r]), d**-0.5)
        pooled = reference.max_pool(scores, int(pkt[r]))
        for g in range(hkv):
            p = got[r, g, :n]
            assert (p[1:] > p[:-1]).all()
            if not torch.equal(p, want[r, g, :n]):
                cand = torch.searchsorted(pos, p)
                assert torch.equal(pos[cand], p)
                torch.testing.assert_close(
                    pooled[g, cand].sort().values,
                    pooled[g, want[r, g, :n] - wl[r] * (want[r, g, :n] >= ws[r])].sort().values,
                )
            for pool, seq in zip(ours, (k_seq, v_seq), strict=True):
                stored = reference.gather_kept(pool, table, r, n)[:, g]
                assert torch.equal(stored, seq[a][p, g])
