"""The MoE layer on its own: LLaDA2's (sigmoid, expert bias, group-limited top-k, routed
scaling, shared experts) against a plain reference of the official layer on the same weights;
LLaDA-MoE's softmax router; FP8 experts; batch invariance of the CPU expert loop."""

from __future__ import annotations

import pytest
import torch

from dllmserve.models.config import MoeConfig
from dllmserve.models.fp8 import Fp8Experts, Fp8Rows, quantize_experts, quantize_weight
from dllmserve.models.moe import MoeWeights, moe_parts, route
from tests.plain_moe import Llada2Layer, llada2_moe_layer, random_llada2_layer

D, INTER = 32, 16


def engine_layer(m: Llada2Layer) -> tuple[MoeWeights, MoeConfig]:
    """The same tensors in the engine's stacked layout."""
    t, experts = m.t, [f"experts.{e}." for e in range(m.num_experts)]
    w = MoeWeights(
        router=t["gate.weight"],
        expert_bias=t["gate.expert_bias"],
        gate_up=torch.stack([torch.cat([t[p + "gate_proj.weight"], t[p + "up_proj.weight"]])
                             for p in experts]),  # fmt: skip
        down=torch.stack([t[p + "down_proj.weight"] for p in experts]),
        shared_gate_up=torch.cat([t["shared_experts.gate_proj.weight"],
                                  t["shared_experts.up_proj.weight"]]) if m.shared else None,
        shared_down=t["shared_experts.down_proj.weight"] if m.shared else None,
    )  # fmt: skip
    cfg = MoeConfig(
        num_experts=m.num_experts, top_k=m.top_k, expert_hidden=INTER,
        shared_hidden=INTER if m.shared else 0, moe_layers=(True,), router="sigmoid_group",
        expert_bias=True, n_group=m.n_group, topk_group=m.topk_group,
        routed_scaling=m.routed_scaling_factor,
    )  # fmt: skip
    return w, cfg


def moe_ffn(h, w: MoeWeights, cfg) -> torch.Tensor:
    """The layer's output as the official layer returns it: routed + shared, in the model dtype
    (the engine sums them in the residual add's launch)."""
    routed, shared = moe_parts(h, w, cfg)
    return routed if shared is None else routed + shared


def tokens(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


LLADA2_CASES = {
    "groups-4-keep-2": dict(num_experts=16, top_k=4, n_group=4, topk_group=2, scaling=2.5,
                            shared=True, bias_scale=0.3),
    "groups-8-keep-3": dict(num_experts=32, top_k=6, n_group=8, topk_group=3, scaling=1.0,
                            shared=False, bias_scale=0.5),
    "top-1-no-groups": dict(num_experts=8, top_k=1, n_group=1, topk_group=1, scaling=1.7,
                            shared=True, bias_scale=0.2),
}  # fmt: skip


@pytest.mark.parametrize("case", list(LLADA2_CASES))
def test_llada2_layer_equals_the_official_layer(case):
    m = random_llada2_layer(D, INTER, seed=7, **LLADA2_CASES[case])
    w, cfg = engine_layer(m)
    h = tokens(40)
    torch.testing.assert_close(moe_ffn(h, w, cfg), llada2_moe_layer(h, m), rtol=1e-5, atol=1e-6)


def test_group_limit_keeps_the_chosen_experts_in_the_best_groups():
    m = random_llada2_layer(D, INTER, seed=8, **LLADA2_CASES["groups-8-keep-3"])
    w, cfg = engine_layer(m)
    h = tokens(64, seed=1)
    ids, _ = route(h, w, cfg)
    groups = (ids // 4).long()  # 32 experts in 8 groups of 4
    assert all(len(set(row.tolist())) <= 3 for row in groups)
    unlimited = MoeConfig(**{**cfg.__dict__, "n_group": 1, "topk_group": 1})
    free, _ = route(h, w, unlimited)
    differ = (ids.sort(-1).values != free.sort(-1).values).any(-1)
    assert differ.any()  # the limit changed some token's choice: the test sees the groups


def test_the_bias_only_chooses_and_the_weights_are_scaled_unbiased_scores():
    m = random_llada2_layer(D, INTER, seed=9, **LLADA2_CASES["groups-4-keep-2"])
    w, cfg = engine_layer(m)
    favoured = [1, 2, 5, 6]  # two groups of four: 0-3 and 4-7
    w.expert_bias = torch.zeros(16)
    w.expert_bias[favoured] = 10.0
    h = tokens(12, seed=2)
    ids, weights = route(h, w, cfg)
    assert all(sorted(row) == favoured for row in ids.tolist())
    scores = torch.sigmoid(h @ w.router.T).gather(1, ids.long())
    want = scores / scores.sum(-1, keepdim=True) * 2.5
    torch.testing.assert_close(weights, want)
    torch.testing.assert_close(weights.sum(-1), torch.full((12,), 2.5))


def test_llada_moe_softmax_weights_are_not_renormalised():
    """The weights are the top-k softmax values (plus the bias when there is one), as they are:
    norm_topk_prob has no effect in the official layer."""
    e, k = 8, 3
    g = torch.Generator().manual_seed(3)
    router = 0.1 * torch.randn(e, D, generator=g)
    bias = 0.01 * torch.randn(e, generator=g)
    experts = dict(gate_up=torch.zeros(e, 2, D), down=torch.zeros(e, D, 1))
    h = tokens(10, seed=4)
    probs = torch.softmax(h @ router.T, -1)
    for b in (None, bias):
        w = MoeWeights(router=router, expert_bias=b, **experts)
        cfg = MoeConfig(
            num_experts=e, top_k=k, expert_hidden=1, shared_hidden=0, moe_layers=(True,),
            router="softmax", expert_bias=b is not None,
        )  # fmt: skip
        ids, weights = route(h, w, cfg)
        want = probs if b is None else probs + b
        torch.testing.assert_close(weights, want.topk(k, -1).values)
        assert torch.equal(ids.long(), want.topk(k, -1).indices)
    unbiased = route(h, MoeWeights(router=router, expert_bias=None, **experts), cfg)[1]
    assert (unbiased.sum(-1) < 0.9).all()


def test_fp8_experts_use_quantize_weights_rule_per_expert():
    wts = torch.randn(4, 24, D, generator=torch.Generator().manual_seed(5))
    q = quantize_experts(wts)
    assert isinstance(q, Fp8Experts) and q.data.dtype == torch.float8_e4m3fn
    assert q.data.shape == (4, 24, D) and q.scale.shape == (4, 24)
    for e in range(4):
        ref = quantize_weight(wts[e])
        assert torch.equal(q.expert(e).data.float(), ref.data.float())
        assert torch.equal(q.expert(e).scale, ref.scale)


def test_fp8_experts_approximate_the_full_precision_layer():
    m = random_llada2_layer(D, INTER, seed=10, **LLADA2_CASES["groups-4-keep-2"])
    w, cfg = engine_layer(m)
    h = tokens(16, seed=6)
    full = moe_ffn(h, w, cfg)
    w.gate_up, w.down = quantize_experts(w.gate_up), quantize_experts(w.down)
    approx = moe_ffn(h, w, cfg)
    assert not torch.equal(approx, full)
    assert (approx - full).norm() / full.norm() < 0.05


def test_fp8_rows_quantized_once_give_the_layer_quantizing_for_each_reader():
    """With FP8 weights the model hands the layer its input quantized once, with the values
    the router reads: the result of the layer quantizing h for its experts and its shared
    expert separately, to the bit."""
    m = random_llada2_layer(D, INTER, seed=13, **LLADA2_CASES["groups-4-keep-2"])
    w, cfg = engine_layer(m)
    w.gate_up, w.down = quantize_experts(w.gate_up), quantize_experts(w.down)
    w.shared_gate_up = quantize_weight(w.shared_gate_up)
    w.shared_down = quantize_weight(w.shared_down)
    h = tokens(9, seed=9)
    once = moe_ffn(Fp8Rows.of(h, keep=True), w, cfg)
    assert torch.equal(once, moe_ffn(h, w, cfg))


def test_a_tokens_result_does_not_depend_on_its_batch():
    """Bit-exact on CPU fp32: the expert GEMMs run in fixed row chunks, the sum in expert
    order, whoever shares the experts."""
    m = random_llada2_layer(D, INTER, seed=11, **LLADA2_CASES["groups-8-keep-3"])
    w, cfg = engine_layer(m)
    h = tokens(70, seed=7)
    whole = moe_ffn(h, w, cfg)
    for rows in ([3], [0, 5, 69], list(range(10, 50))):
        assert torch.equal(moe_ffn(h[rows], w, cfg), whole[rows])


@pytest.mark.parametrize("fp8", [False, True])
def test_cpu_expert_loop_agrees_with_the_fused_kernels_reference(fp8):
    """The engine hands `kernels.fused_moe` its stacked layout (gate rows then up rows, FP8
    scales per expert row): the kernel's reference gives the CPU loop's result."""
    from dllmserve import kernels
    from dllmserve.models.moe import experts

    m = random_llada2_layer(D, INTER, seed=12, **LLADA2_CASES["groups-4-keep-2"])
    w, cfg = engine_layer(m)
    h = tokens(33, seed=8)
    ids, weights = route(h, w, cfg)
    gate_up, down = w.gate_up, w.down
    scales = {}
    if fp8:
        gate_up, down = quantize_experts(gate_up), quantize_experts(down)
        scales = dict(w_gate_up_scale=gate_up.scale, w_down_scale=down.scale)
    ours = experts(h, gate_up, down, ids, weights)
    data = (gate_up.data, down.data) if fp8 else (gate_up, down)
    theirs = kernels.fused_moe(h, *data, ids, weights, **scales)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
