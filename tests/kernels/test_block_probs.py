"""The fused block-diffusion probabilities (`block_probs`) vs the reference, which is the
engine's CPU path and must stay the sampler's exact softmax / argmax / gather."""

from __future__ import annotations

import pytest
import torch
from kernel_testlib import DEVICE

import dllmserve.kernels as K
from dllmserve.engine.temperature import over_temperature
from dllmserve.kernels import reference

DTYPES = [torch.bfloat16, torch.float32, torch.float16]
TEMPS = [0.0, 0.3, 1.0, 1.7, 0.0]  # drawn rows at several T, mixed with greedy rows

# conf = exp(v[x0] - m) / s in fp32 on both sides, from bit-identical v (the kernel rounds
# logit / T to the logits' dtype exactly as torch does, so the dtype adds no error): they differ
# by a few ulps of exp and the order of the sum s. A sum of n positive terms in any order is
# within (n - 1) u of exact, but both sides sum in lanes, then across them: torch's CPU softmax
# about V / 8 terms a lane, the kernel V / BLOCK_V + log2(BLOCK_V); for V <= 3000 that is
# < 400 u = 2.4e-5 relative, so 5e-5. atol only for confidences near fp32's underflow.
CONF_TOL = dict(rtol=5e-5, atol=1e-30)


def check(logits, temperature, drawn, **kw):
    got = K.block_probabilities(logits, temperature, drawn, **kw)
    want = reference.block_probabilities(logits, temperature, drawn)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], **CONF_TOL)
    return got


def slab(r, b, v, dtype, seed=0, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(r, b, v, generator=gen) * scale
    logits[..., 5] = -torch.inf  # a masked entry, as top-k / top-p leave them
    drawn = torch.randint(0, v, (r, b), generator=gen)
    return logits.to(DEVICE, dtype), drawn.to(DEVICE)


def temps(r, offset=0):
    return torch.tensor([TEMPS[(i + offset) % len(TEMPS)] for i in range(r)], device=DEVICE)


def launch_block_v(block_v):
    """Call the launcher directly with a small vocabulary chunk."""
    from dllmserve.kernels import block_probs

    def run(logits, temperature, drawn):
        return block_probs.block_probabilities(logits, temperature, drawn, block_v=block_v)

    return run


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("r,b,v", [(3, 4, 1037), (2, 3, 3000), (1, 1, 64)])
def test_greedy_rows(r, b, v, dtype):
    logits, _ = slab(r, b, v, dtype, seed=v)
    check(logits, torch.zeros(r, device=DEVICE), None)
    check(logits, temps(r), None)  # nothing drawn: every row greedy, the logits unscaled


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [0, 1, 3])
def test_drawn_rows_mixed_with_greedy(dtype, offset):
    logits, drawn = slab(3, 4, 1037, dtype, seed=offset)
    drawn[0, 1] = 5  # a masked token drawn: probability 0
    x0, _ = check(logits, temps(3, offset), drawn)
    t = temps(3, offset)
    assert torch.equal(x0[t > 0], drawn[t > 0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("block_v", [256, 512])
def test_vocab_not_a_multiple_of_the_chunk(dtype, block_v, monkeypatch):
    monkeypatch.setattr(K, "_impl", lambda *_: launch_block_v(block_v))
    logits, drawn = slab(2, 3, 1000 + 37, dtype, seed=block_v)
    logits[1, 2, -1] = 40.0  # the winner in the last, partial chunk
    x0, _ = check(logits, temps(2, 4), drawn)
    assert x0[1, 2] == 1036


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_v", [None, 256])
def test_exact_ties_take_the_lowest_index(dtype, block_v, monkeypatch):
    if block_v:  # ties in one lane of successive chunks, and across lanes
        monkeypatch.setattr(K, "_impl", lambda *_: launch_block_v(block_v))
    gen = torch.Generator().manual_seed(1)
    logits = torch.randint(-4, 4, (2, 4, 2000), generator=gen).float()
    logits[0, 0, [17, 900, 1999]] = 9.0
    logits[0, 1, [33 + 512, 33, 33 + 256]] = 9.0
    logits = logits.to(DEVICE, dtype)
    x0, _ = check(logits, temps(2), None)
    first = (logits == logits.amax(-1, keepdim=True)).float().argmax(-1)  # the first maximum
    assert x0[0, 0] == 17 and x0[0, 1] == 33 and torch.equal(x0, first)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_near_ties_where_exp_rounds_to_one(dtype):
    """0 and 1e-30 are distinct logits but exp(0 - 1e-30) is 1.0 in fp32: their probabilities
    tie, so the argmax is the lower index even though the larger logit is later."""
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 1037, generator=gen) - 20
    logits[:, :, 40] = 0.0
    logits[:, :, 700] = 1e-30
    logits[1, 2, 40] = -1e-30  # still rounds to 1: the tie holds below the max too
    logits = logits.to(DEVICE, dtype)
    assert logits[0, 0, 700] > logits[0, 0, 40]
    x0, _ = check(logits, torch.zeros(2, device=DEVICE), None)
    assert (x0 == 40).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_vocabulary_and_single_survivor(dtype):
    logits, drawn = slab(3, 2, 1037, dtype, seed=3)
    logits[:, :, 300:900] = -torch.inf
    logits[2, 1] = -torch.inf
    logits[2, 1, 321] = 2.5  # all -inf but one: x0 is it, with probability exactly 1
    drawn[2, 1] = 321
    for t in (torch.zeros(3, device=DEVICE), temps(3, 2)):
        x0, conf = check(logits, t, drawn)
        assert x0[2, 1] == 321 and conf[2, 1] == 1.0


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # -inf - -inf, on purpose
def test_all_inf_row_follows_torch():
    """No finite logit: torch's NaN probabilities, whose argmax is id 0."""
    logits = torch.full((1, 2, 300), -torch.inf, device=DEVICE)
    logits[0, 1, 7] = 0.0
    x0, conf = K.block_probabilities(logits, torch.zeros(1, device=DEVICE), None)
    assert x0.tolist() == [[0, 7]] and conf[0, 0].isnan() and conf[0, 1] == 1.0


def test_reference_is_the_sampler_softmax():
    """Bit for bit the sampler's former PyTorch path (the CPU path must not move a token)."""
    logits, drawn = slab(3, 4, 1037, torch.bfloat16, seed=4)
    t = temps(3, 1)
    scaled = over_temperature(logits, t.to(logits.dtype)[:, None, None])
    p = torch.softmax(scaled.float(), -1)
    x0 = torch.where(t[:, None] > 0, drawn, p.argmax(-1))
    got = reference.block_probabilities(logits, t, drawn)
    assert torch.equal(got[0], x0)
    assert torch.equal(got[1], p.gather(-1, x0[..., None])[..., 0].double())


@pytest.mark.parametrize(
    "logits,temperature,drawn,name",
    [
        (torch.zeros(2, 100), torch.zeros(2), None, "logits"),
        (torch.zeros(2, 3, 100, dtype=torch.int64), torch.zeros(2), None, "logits"),
        (torch.zeros(2, 3, 100), torch.zeros(3), None, "temperature"),
        (torch.zeros(2, 3, 100), torch.zeros(2, 1), None, "temperature"),
        (torch.zeros(2, 3, 100), torch.zeros(2), torch.zeros(2, 4, dtype=torch.int64), "drawn"),
        (torch.zeros(2, 3, 100), torch.zeros(2), torch.zeros(2, 3, dtype=torch.int32), "drawn"),
    ],
)
def test_bad_inputs_name_the_argument(logits, temperature, drawn, name):
    with pytest.raises(ValueError, match=f"block_probabilities: {name} must be"):
        K.block_probabilities(logits.to(DEVICE), temperature.to(DEVICE), drawn)


@pytest.mark.parametrize("dtype", DTYPES)
def test_token_probabilities_of_given_rows_and_tokens(dtype):
    """A structured output's DP picks: any token of any row, greedy or at T > 0, from the same
    softmax as the block sampler's; at the sampler's own x0 the very confidence it gave."""
    logits, drawn = slab(4, 3, 1037, dtype, seed=9)
    t = temps(4, 2)
    x0, conf = K.block_probabilities(logits, t, drawn)
    rows = torch.tensor([2, 0, 3], device=DEVICE)  # a subset, out of order
    picks = torch.randint(0, 1037, (3, 3), generator=torch.Generator().manual_seed(1))
    picks = picks.to(DEVICE)
    picks[0, 1] = 5  # a masked token: probability 0
    got = K.token_probabilities(logits, rows, picks, t[rows])
    want = reference.token_probabilities(logits, rows, picks, t[rows])
    torch.testing.assert_close(got, want, **CONF_TOL)
    assert got[0, 1] == 0 and got.dtype == torch.float64
    # the sampler's own tokens: the same bits as its confidence, kernel and reference alike
    assert torch.equal(K.token_probabilities(logits, rows, x0[rows], t[rows]), conf[rows])
    ref_x0, ref_conf = reference.block_probabilities(logits, t, drawn)
    same = reference.token_probabilities(logits, rows, ref_x0[rows], t[rows])
    assert torch.equal(same, ref_conf[rows])


def test_token_probabilities_names_bad_rows_and_tokens():
    from dllmserve.kernels import block_probs

    logits = torch.zeros(2, 3, 100, device=DEVICE)
    ok = torch.zeros(1, 3, dtype=torch.int64, device=DEVICE)
    with pytest.raises(ValueError, match="block_probabilities: rows must be integer"):
        block_probs.token_probabilities(logits, torch.zeros(1, device=DEVICE), ok,
                                        torch.zeros(1, device=DEVICE))  # fmt: skip
    with pytest.raises(ValueError, match="block_probabilities: drawn must be int64"):
        block_probs.token_probabilities(logits, torch.zeros(1, dtype=torch.long, device=DEVICE),
                                        ok[:, :2], torch.zeros(1, device=DEVICE))  # fmt: skip
