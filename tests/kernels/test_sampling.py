"""Fused Triton sampling vs the reference and the engine's own batched sampler."""

from __future__ import annotations

import pytest
import torch
from kernel_testlib import DEVICE, ON_GPU

import dllmserve.kernels as K
from dllmserve.engine.sampler import LOW_CONFIDENCE, SamplingBatch, sample
from dllmserve.kernels import reference

DTYPES = [torch.bfloat16, torch.float32] if ON_GPU else [torch.float32, torch.float16]
SHAPES = [(3, 4, 3000), (1, 1, 1024), (2, 5, 77), (2, 3, 20000)]
if ON_GPU:
    SHAPES += [(8, 32, 126464), (4, 32, 152064)]
MASK, EOS, EOT = 5, 2, 3


def inputs(r, b, v, dtype, ties=False, seed=0):
    gen = torch.Generator().manual_seed(seed + r * 7 + v)
    if ties:  # few distinct values: argmax must take the first of equal maxima
        logits = torch.randint(-4, 4, (r, b, v), generator=gen).float()
    else:
        logits = torch.randn(r, b, v, generator=gen) * 3
    logits[:, :, EOS] += 4  # make the EOS / EoT switches matter
    logits[:, :, EOT] += 4
    temps = torch.tensor([0.0, 0.7, 1.3, 1.0, 0.0, 0.3, 2.0, 1.0], dtype=torch.float64)[:r]
    flags = torch.tensor([True, False, True, True, False, False, True, False])[:r]
    return dict(
        logits=logits.to(DEVICE, dtype),
        temperature=temps.to(DEVICE),
        seed=torch.randint(0, 2**62, (r,), generator=gen).to(DEVICE),
        step=torch.randint(0, 500, (r,), generator=gen).to(DEVICE),
        positions=torch.randint(0, 4096, (r, b), generator=gen).to(DEVICE),
        logits_eos_inf=flags.to(DEVICE),
        conf_eos_eot_inf=(~flags).to(DEVICE),
    )


def conf_tol(dtype):
    return dict(atol=1e-6, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-4, rtol=1e-2)


@pytest.mark.parametrize("eot", [EOT, None])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("r,b,v", SHAPES)
def test_sample_tokens_matches_reference(r, b, v, dtype, eot):
    x = inputs(r, b, v, dtype)
    got = K.sample_tokens(**x, mask_id=MASK, eos_id=EOS, eot_id=eot)
    want = reference.sample_tokens(**x, mask_id=MASK, eos_id=EOS, eot_id=eot)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], **conf_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_sample_tokens_peaked_rows(dtype):
    """One dominant token per row: most chunks are skipped by the fp32 estimate, the rest
    must still give the float64 Gumbel-max winner."""
    x = inputs(3, 4, 9000, dtype, seed=5)
    hot = torch.randint(0, 9000, (3, 4), generator=torch.Generator().manual_seed(1))
    x["logits"].scatter_add_(
        -1, hot.to(DEVICE)[..., None], torch.full_like(x["logits"][..., :1], 6)
    )
    got = K.sample_tokens(**x, mask_id=MASK, eos_id=EOS, eot_id=EOT)
    want = reference.sample_tokens(**x, mask_id=MASK, eos_id=EOS, eot_id=EOT)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], **conf_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_sample_tokens_ties_take_first(dtype):
    x = inputs(4, 6, 2100, dtype, ties=True)
    x["temperature"].zero_()
    got = K.sample_tokens(**x, mask_id=MASK, eos_id=EOS, eot_id=EOT)
    want = reference.sample_tokens(**x, mask_id=MASK, eos_id=EOS, eot_id=EOT)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], **conf_tol(dtype))


def test_sample_tokens_same_tokens_as_engine_sampler():
    r, b, v = SHAPES[0]
    dtype = DTYPES[0]
    x = inputs(r, b, v, dtype, seed=11)
    batch = SamplingBatch(
        temperature=x["temperature"],
        seed=x["seed"],
        step=x["step"],
        positions=x["positions"],
        eligible=torch.ones(r, b, dtype=torch.bool, device=DEVICE),
        k=torch.ones(r, dtype=torch.int64, device=DEVICE),
        transfer_prob=torch.full((r,), float("nan"), dtype=torch.float64, device=DEVICE),
        alg_temp=torch.zeros(r, dtype=torch.float64, device=DEVICE),
        threshold=torch.full((r,), float("nan"), device=DEVICE),
        mode=torch.full((r,), LOW_CONFIDENCE, device=DEVICE),
        top_k=torch.zeros(r, dtype=torch.int64, device=DEVICE),
        top_p=torch.ones(r, device=DEVICE),
        logits_eos_inf=x["logits_eos_inf"],
        conf_eos_eot_inf=x["conf_eos_eot_inf"],
        modes=frozenset({LOW_CONFIDENCE}),
        any_noise=True,
        any_threshold=False,
        any_filter=False,
        any_alg_temp=False,
        any_transfer=False,
    )
    x0_engine, _ = sample(x["logits"], batch, EOS, EOT, MASK)
    x0, _ = K.sample_tokens(**x, mask_id=MASK, eos_id=EOS, eot_id=EOT)
    assert torch.equal(x0, x0_engine)
