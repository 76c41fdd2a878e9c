"""Fused MoE: the Triton kernel against the per-expert reference (fp32/fp16 under the CPU
interpreter, bf16/fp32 on the GPU), its FP8 path, its align step and its argument checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_testlib import ATOL, DEVICE, DTYPES, randn

from dllmserve.kernels import fused_moe, reference
from dllmserve.kernels.moe_align import align_rows
from dllmserve.models.fp8 import quantize_experts


def _routing(gen: torch.Generator, t: int, e: int, k: int, unused: tuple[int, ...] = ()):
    """k distinct experts per token, never one of `unused`; weights in (0, 1)."""
    allowed = torch.tensor([x for x in range(e) if x not in unused])
    ids = torch.stack([allowed[torch.randperm(len(allowed), generator=gen)[:k]] for _ in range(t)])
    weights = torch.rand(t, k, generator=gen) + 0.05
    return ids.to(DEVICE, torch.int32), weights.to(DEVICE)


def _weights(gen: torch.Generator, e: int, d: int, i: int, dtype: torch.dtype):
    w_gate_up = randn(gen, e, 2 * i, d, dtype=torch.float32) / d**0.5
    w_down = randn(gen, e, d, i, dtype=torch.float32) / i**0.5
    return w_gate_up.to(dtype), w_down.to(dtype)


def _fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[E, N, K] -> e4m3 data and per-row scales [E, N], as the model's loader quantizes."""
    q = quantize_experts(w)
    return q.data, q.scale


# (T, d, I, E, k, experts that get no token): one token with k = 1; ragged d and I (masked
# tiles); k = 8 of 11 experts; 40 tokens on 3 experts (an expert over several M-blocks)
CASES = [
    (1, 32, 16, 5, 1, (0, 2, 3, 4)),
    (5, 48, 40, 7, 3, (2, 6)),
    (3, 64, 32, 11, 8, (5,)),
    (40, 32, 24, 3, 2, ()),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_fused_moe_matches_reference(dtype, case):
    t, d, i, e, k, unused = case
    gen = torch.Generator().manual_seed(t * 100 + e)
    x = randn(gen, t, d, dtype=dtype)
    w_gate_up, w_down = _weights(gen, e, d, i, dtype)
    ids, weights = _routing(gen, t, e, k, unused)
    out = fused_moe(x, w_gate_up, w_down, ids, weights)
    ref = reference.fused_moe(x, w_gate_up, w_down, ids, weights)
    assert out.shape == (t, d) and out.dtype == dtype
    torch.testing.assert_close(out, ref, atol=2 * ATOL[dtype], rtol=1e-2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES[1:3])
def test_fused_moe_fp8_matches_reference(dtype, case):
    """FP8 weights and activations: equal to the reference's dequantized fp32 math, up to an
    occasional intermediate value landing on the other side of an e4m3 rounding boundary."""
    t, d, i, e, k, unused = case
    gen = torch.Generator().manual_seed(t * 100 + e + 1)
    x = randn(gen, t, d, dtype=dtype)
    w_gate_up, w_down = _weights(gen, e, d, i, torch.float32)
    (q_gu, s_gu), (q_d, s_d) = _fp8(w_gate_up), _fp8(w_down)
    ids, weights = _routing(gen, t, e, k, unused)
    kw = {"w_gate_up_scale": s_gu, "w_down_scale": s_d}
    out = fused_moe(x, q_gu, q_d, ids, weights, **kw)
    ref = reference.fused_moe(x, q_gu, q_d, ids, weights, **kw)
    assert out.dtype == dtype
    torch.testing.assert_close(out, ref, atol=3e-2, rtol=2e-2)
    exact = reference.fused_moe(x.float(), w_gate_up, w_down, ids, weights)
    assert (out.float() - exact).norm() < 0.1 * exact.norm()  # FP8's error, not a wrong sum


def test_fp8_rows_made_before_give_the_same_result():
    """An MoE layer hands the kernel x's FP8 rows made by its norm (`x_fp8`): the same bits as
    the kernel quantizing x itself."""
    from dllmserve.kernels import quantize_rows

    t, d, i, e, k, unused = CASES[2]
    gen = torch.Generator().manual_seed(31)
    x = randn(gen, t, d, dtype=DTYPES[0])
    w_gate_up, w_down = _weights(gen, e, d, i, torch.float32)
    (q_gu, s_gu), (q_d, s_d) = _fp8(w_gate_up), _fp8(w_down)
    ids, weights = _routing(gen, t, e, k, unused)
    kw = {"w_gate_up_scale": s_gu, "w_down_scale": s_d}
    own = fused_moe(x, q_gu, q_d, ids, weights, **kw)
    given = fused_moe(x, q_gu, q_d, ids, weights, **kw, x_fp8=quantize_rows(x))
    assert torch.equal(given, own)
    ref = reference.fused_moe(x, q_gu, q_d, ids, weights, **kw, x_fp8=quantize_rows(x))
    assert torch.equal(ref, reference.fused_moe(x, q_gu, q_d, ids, weights, **kw))


def test_reference_equals_dense_formula():
    """The per-expert loop against every expert applied to every token, masked by routing."""
    gen = torch.Generator().manual_seed(11)
    t, d, i, e, k = 6, 16, 8, 5, 2
    x = torch.randn(t, d, generator=gen)
    w_gate_up, w_down = torch.randn(e, 2 * i, d, generator=gen), torch.randn(e, d, i, generator=gen)
    ids, weights = _routing(gen, t, e, k, (3,))
    ids, weights = ids.cpu(), weights.cpu()
    gu = torch.einsum("td,efd->tef", x, w_gate_up)
    y = torch.einsum("tei,edi->ted", F.silu(gu[..., :i]) * gu[..., i:], w_down)  # [T, E, d]
    gate = torch.zeros(t, e).scatter_(1, ids.long(), weights)
    dense = torch.einsum("te,ted->td", gate, y)
    torch.testing.assert_close(reference.fused_moe(x, w_gate_up, w_down, ids, weights), dense)


@pytest.mark.parametrize("chunk", [16, 128])  # several chunks, one chunk
@pytest.mark.parametrize("bm", [16, 32])
@pytest.mark.parametrize("one_program", [True, False])
def test_align_rows_groups_rows_by_expert(chunk, bm, one_program):
    gen = torch.Generator().manual_seed(5)
    t, e, k = 9, 6, 3
    ids, _ = _routing(gen, t, e, k, (1,))
    rows, block_expert = align_rows(ids, e, bm, chunk, one_program_rows=t * k if one_program else 0)
    n = t * k
    assert rows.numel() == block_expert.numel() * bm == (-(-n // bm) + min(e, n)) * bm
    flat = ids.reshape(-1).cpu()
    seen = []
    for b, ex in enumerate(block_expert.tolist()):
        blk = rows[b * bm : (b + 1) * bm].cpu()
        real = blk[blk < n]
        if ex < 0:
            assert real.numel() == 0
            continue
        assert real.numel() > 0 and (flat[real.long()] == ex).all()
        assert torch.equal(real, real.sort().values)  # (t, j) order within an expert
        seen += real.tolist()
    assert sorted(seen) == list(range(n))  # every row exactly once
    assert 1 not in block_expert.tolist()  # the unused expert owns no block


@pytest.mark.parametrize("t,e,k", [(32, 256, 8), (5, 64, 8), (33, 8, 2), (1, 4, 1)])
def test_one_program_align_equals_the_parallel_one(t, e, k):
    """A decode step's align (one launch walking the chunks) gives the large batches' (four
    launches, parallel chunks) exactly, rows and block experts; a skewed routing too, where
    one expert takes most rows across several chunks."""
    gen = torch.Generator().manual_seed(t * e + k)
    for skew in (False, True):
        ids, _ = _routing(gen, t, e, k)
        if skew:
            ids = torch.where(ids % 3 == 0, torch.zeros_like(ids), ids)
        bm = 16
        one = align_rows(ids, e, bm, one_program_rows=t * k)
        parallel = align_rows(ids, e, bm, one_program_rows=0)
        assert torch.equal(one[0], parallel[0]) and torch.equal(one[1], parallel[1])


def test_a_token_does_not_depend_on_its_batch():
    gen = torch.Generator().manual_seed(8)
    d, i, e, k = 32, 16, 4, 2
    x = randn(gen, 3, d, dtype=DTYPES[0])
    w_gate_up, w_down = _weights(gen, e, d, i, DTYPES[0])
    ids, weights = _routing(gen, 3, e, k)
    batch = fused_moe(x, w_gate_up, w_down, ids, weights)
    alone = fused_moe(x[1:2], w_gate_up, w_down, ids[1:2], weights[1:2])
    assert torch.equal(batch[1:2], alone)


def test_no_tokens():
    gen = torch.Generator().manual_seed(2)
    w_gate_up, w_down = _weights(gen, 3, 32, 16, DTYPES[0])
    x = torch.empty(0, 32, device=DEVICE, dtype=DTYPES[0])
    ids = torch.empty(0, 2, device=DEVICE, dtype=torch.int32)
    out = fused_moe(x, w_gate_up, w_down, ids, torch.empty(0, 2, device=DEVICE))
    assert out.shape == (0, 32)


def test_launcher_refuses_bad_arguments():
    from dllmserve.kernels.moe_kernel import fused_moe as launcher

    gen = torch.Generator().manual_seed(4)
    x = randn(gen, 2, 32, dtype=DTYPES[0])
    w_gate_up, w_down = _weights(gen, 3, 32, 16, DTYPES[0])
    ids, weights = _routing(gen, 2, 3, 2)
    with pytest.raises(ValueError, match="w_down must be"):
        launcher(x, w_gate_up, w_down[:, :, :8], ids, weights)
    with pytest.raises(ValueError, match="topk_ids must be .* int32"):
        launcher(x, w_gate_up, w_down, ids.long(), weights)
    with pytest.raises(ValueError, match="topk_weights must be"):
        launcher(x, w_gate_up, w_down, ids, weights.double())
    with pytest.raises(ValueError, match="both w_gate_up_scale and w_down_scale"):
        launcher(x, w_gate_up, w_down, ids, weights, w_gate_up_scale=torch.ones(3, 32))
    with pytest.raises(ValueError, match="w_gate_up must be torch.float8_e4m3fn"):
        scales = {"w_gate_up_scale": torch.ones(3, 32), "w_down_scale": torch.ones(3, 32)}
        launcher(x, w_gate_up, w_down, ids, weights, **scales)
    rows = (x.to(torch.float8_e4m3fn), torch.ones(2, 1, device=x.device))
    with pytest.raises(ValueError, match="x_fp8 is for FP8 weights"):
        launcher(x, w_gate_up, w_down, ids, weights, x_fp8=rows)
    (q_gu, s_gu), (q_d, s_d) = _fp8(w_gate_up.float()), _fp8(w_down.float())
    fp8 = {"w_gate_up_scale": s_gu, "w_down_scale": s_d}
    with pytest.raises(ValueError, match="x_fp8 must be"):
        launcher(x, q_gu, q_d, ids, weights, **fp8, x_fp8=(rows[0][:1], rows[1]))
    with pytest.raises(ValueError, match="x_fp8 must be .*scales fp32"):
        launcher(x, q_gu, q_d, ids, weights, **fp8, x_fp8=(rows[0], rows[1].double()))
