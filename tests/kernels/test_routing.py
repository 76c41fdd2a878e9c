"""MoE routing: the Triton kernel picks the reference's experts (ties by lowest id) with its
weights, and the reference is the torch routing moe.py had before the kernel, so the models'
numbers do not change."""

from __future__ import annotations

import pytest
import torch
from kernel_testlib import DEVICE, ON_GPU

from dllmserve import kernels
from dllmserve.kernels import reference

# router, E, kwargs: LLaDA-MoE's softmax (E=64, k=8), LLaDA2-mini's groups (E=256, 8 groups)
CASES = [
    ("softmax", 8, {"top_k": 2}),
    ("softmax", 64, {"top_k": 8}),
    ("softmax", 256, {"top_k": 8}),
    ("sigmoid_group", 8, {"top_k": 2, "n_group": 4, "topk_group": 2}),
    ("sigmoid_group", 64, {"top_k": 6, "n_group": 8, "topk_group": 4, "routed_scaling": 2.5}),
    ("sigmoid_group", 256, {"top_k": 8, "n_group": 8, "topk_group": 4, "routed_scaling": 2.5}),
]
BIAS_DTYPE = torch.bfloat16 if ON_GPU else torch.float16  # the interpreter mishandles bf16


def _moe_torch_routing(logits, bias, router, top_k, n_group=1, topk_group=1, routed_scaling=1.0):
    """moe.py's routing before the kernel (torch.topk), after its router GEMM."""
    if router == "softmax":
        probs = torch.softmax(logits, dim=-1)
        if bias is not None:
            probs = probs + bias.float()
        weights, ids = torch.topk(probs, top_k, dim=-1)
        return ids.to(torch.int32), weights
    scores = torch.sigmoid(logits)
    biased = scores if bias is None else scores + bias.float()
    t, e = biased.shape
    group_scores = biased.view(t, n_group, e // n_group).topk(2, dim=-1).values.sum(dim=-1)
    kept = torch.topk(group_scores, topk_group, dim=-1).indices
    keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, kept, True)
    masked = biased.masked_fill(~keep.repeat_interleave(e // n_group, dim=1), -torch.inf)
    ids = torch.topk(masked, top_k, dim=-1).indices
    weights = scores.gather(1, ids)
    if top_k > 1:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return ids.to(torch.int32), weights * routed_scaling


def _inputs(seed: int, t: int, e: int, with_bias: bool, ties: bool = False):
    """Random logits and bias; with ties, few distinct values (many equal logits, equal groups)."""
    gen = torch.Generator().manual_seed(seed)
    if ties:
        logits = torch.randint(0, 4, (t, e), generator=gen) * 0.5
        bias = torch.randint(0, 2, (e,), generator=gen) * 0.125
    else:
        logits = torch.randn(t, e, generator=gen) * 2
        bias = torch.randn(e, generator=gen) * 0.1
    bias = bias.to(DEVICE, BIAS_DTYPE) if with_bias else None
    return logits.to(DEVICE, torch.float32), bias


def _assert_matches_reference(logits, bias, router, kw, round_to=None):
    ids, weights = kernels.route_experts(logits, bias, router=router, round_to=round_to, **kw)
    ref_ids, ref_weights = reference.route_experts(
        logits, bias, router=router, round_to=round_to, **kw
    )
    assert ids.dtype == torch.int32 and weights.dtype == torch.float32
    assert ids.shape == weights.shape == (logits.shape[0], kw["top_k"])
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(weights, ref_weights, rtol=1e-5, atol=1e-7)
    return ids, weights


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("t", [1, 5, 33])
@pytest.mark.parametrize(("router", "e", "kw"), CASES)
def test_kernel_matches_reference(router, e, kw, t, with_bias):
    logits, bias = _inputs(e + t, t, e, with_bias)
    _assert_matches_reference(logits, bias, router, kw)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize(("router", "e", "kw"), CASES)
def test_kernel_breaks_ties_like_reference(router, e, kw, with_bias):
    logits, bias = _inputs(e, 33, e, with_bias, ties=True)
    ids, _ = _assert_matches_reference(logits, bias, router, kw)
    # equal scores come out by ascending expert id
    scores = torch.sigmoid(logits) if router == "sigmoid_group" else torch.softmax(logits, -1)
    biased = scores.cpu()
    if bias is not None:
        biased = biased + bias.float().cpu()
    chosen = biased.gather(1, ids.long().cpu())
    same = chosen[:, 1:] == chosen[:, :-1]
    assert (ids[:, 1:].cpu() > ids[:, :-1].cpu())[same].all()


@pytest.mark.parametrize(("router", "e", "kw"), CASES)
def test_all_equal_logits_pick_the_lowest_ids(router, e, kw):
    """Every expert and every group ties: the first groups, then the first experts, win."""
    logits = torch.zeros(3, e, device=DEVICE)
    ids, _ = _assert_matches_reference(logits, None, router, kw)
    want = torch.arange(kw["top_k"], dtype=torch.int32, device=DEVICE).expand(3, -1)
    assert torch.equal(ids, want)


@pytest.mark.parametrize(
    ("router", "kw"),
    [("softmax", {"top_k": 4}), ("sigmoid_group", {"top_k": 6, "n_group": 8, "topk_group": 3})],
)
def test_groups_of_a_size_that_is_no_power_of_two(router, kw):
    """E = 96: each group of 12 is padded to 16 in the kernel (scores well below 1/2, which a
    padding lane's sigmoid(0) would beat)."""
    logits, bias = _inputs(9, 33, 96, with_bias=True)
    _assert_matches_reference(logits - 4, bias, router, kw)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's numpy on NaN
def test_nan_logits_still_give_experts_in_range():
    """A diverged token must not send fused_moe outside the expert weights."""
    logits = torch.full((2, 64), float("nan"), device=DEVICE)
    logits[1, :10] = 1.0
    kw = {"top_k": 8, "n_group": 8, "topk_group": 4}
    for router in ("softmax", "sigmoid_group"):
        ids, _ = kernels.route_experts(logits, None, router=router, **kw)
        assert ids.min() >= 0 and ids.max() < 64


@pytest.mark.parametrize("round_to", [torch.float16, torch.bfloat16])
def test_softmax_weights_rounded_to_the_model_dtype(round_to):
    logits, bias = _inputs(1, 33, 64, with_bias=True)
    kw = {"top_k": 8}
    ids, weights = kernels.route_experts(logits, bias, router="softmax", round_to=round_to, **kw)
    ref_ids, ref_weights = reference.route_experts(
        logits, bias, router="softmax", round_to=round_to, **kw
    )
    assert torch.equal(ids, ref_ids)
    assert torch.equal(weights.to(round_to).float(), weights)  # on the model dtype's grid
    # within one step of that grid (the unrounded weights may differ by an fp32 ulp)
    step = 2.0**-10 if round_to == torch.float16 else 2.0**-7
    torch.testing.assert_close(weights, ref_weights, rtol=step, atol=0)


def test_kernel_reads_strided_logits():
    gen = torch.Generator().manual_seed(5)
    wide = torch.randn(7, 320, generator=gen).to(DEVICE)
    kw = {"top_k": 8, "n_group": 8, "topk_group": 4, "routed_scaling": 2.5}
    ids, weights = kernels.route_experts(wide[:, 32:288], None, router="sigmoid_group", **kw)
    ref = reference.route_experts(wide[:, 32:288].contiguous(), None, router="sigmoid_group", **kw)
    assert torch.equal(ids, ref[0])
    torch.testing.assert_close(weights, ref[1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize(("router", "e", "kw"), CASES)
def test_reference_equals_moe_torch_routing(router, e, kw, with_bias):
    """Without ties, the reference (the CPU path of moe.route) is moe.py's former torch code
    to the bit, so the CPU parity tests and the models' numbers are unchanged."""
    logits, bias = _inputs(2 * e, 33, e, with_bias)
    ids, weights = reference.route_experts(logits, bias, router=router, **kw)
    old_ids, old_weights = _moe_torch_routing(logits, bias, router, **kw)
    assert torch.equal(ids, old_ids)
    assert torch.equal(weights, old_weights)


BAD = [
    ("logits", {"logits": torch.zeros(2, 8, dtype=torch.float16)}),
    ("logits", {"logits": torch.zeros(8)}),
    ("logits", {"logits": torch.zeros(2, 2048)}),
    ("bias", {"bias": torch.zeros(7)}),
    ("bias", {"bias": torch.zeros(8, dtype=torch.int32)}),
    ("router", {"router": "softmax_group"}),
    ("top_k", {"top_k": 0}),
    ("top_k", {"top_k": 9}),
    ("n_group", {"n_group": 3}),
    ("n_group", {"n_group": 8}),  # groups of one expert have no second best
    ("topk_group", {"topk_group": 5}),
    ("topk_group", {"top_k": 5, "topk_group": 1}),  # one group of 2 can't hold 5 experts
    ("round_to", {"round_to": torch.int32}),
]


@pytest.mark.parametrize(("name", "change"), BAD)
def test_bad_inputs_name_the_argument(name, change):
    args = {"logits": torch.zeros(2, 8), "bias": None, "router": "sigmoid_group", "top_k": 2}
    args |= {"n_group": 4, "topk_group": 2}
    args |= change
    args["logits"] = args["logits"].to(DEVICE)
    if args["bias"] is not None:
        args["bias"] = args["bias"].to(DEVICE)
    logits, bias = args.pop("logits"), args.pop("bias")
    for route in (kernels.route_experts, reference.route_experts):
        with pytest.raises(ValueError, match=name):
            route(logits, bias, **args)


@pytest.mark.skipif(not ON_GPU, reason="needs CUDA")
def test_cuda_kernel_matches_cpu_reference():
    """LLaDA2-mini's router on the GPU (libdevice exp) against the CPU reference, and the
    kernel replayed in a CUDA graph."""
    kw = {"top_k": 8, "n_group": 8, "topk_group": 4, "routed_scaling": 2.5}
    logits, bias = _inputs(11, 64, 256, with_bias=True)
    ref_ids, ref_weights = reference.route_experts(
        logits.cpu(), bias.cpu(), router="sigmoid_group", **kw
    )
    graph = torch.cuda.CUDAGraph()
    kernels.route_experts(logits, bias, router="sigmoid_group", **kw)  # compile outside
    with torch.cuda.graph(graph):
        ids, weights = kernels.route_experts(logits, bias, router="sigmoid_group", **kw)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(ids.cpu(), ref_ids)
    torch.testing.assert_close(weights.cpu(), ref_weights, rtol=1e-5, atol=1e-7)
