"""The parts of an MoE checkpoint layout that LLaDA-MoE and LLaDA2 name alike: SwiGLU MLPs of
gate/up/down projections, a router, per-expert MLPs under `mlp.experts.{e}.`, and the engine's
stacked expert weights built from them. Each layout says where its bias and shared expert are."""

from __future__ import annotations

import torch

from dllmserve.models.model_config import MoeConfig
from dllmserve.models.moe import MoeWeights


def mlp_names(prefix: str, d: int, hidden: int) -> dict[str, tuple[int, ...]]:
    """A SwiGLU MLP's three projections under `prefix`, with their shapes."""
    return {
        prefix + "gate_proj.weight": (hidden, d),
        prefix + "up_proj.weight": (hidden, d),
        prefix + "down_proj.weight": (d, hidden),
    }


def moe_names(
    layer: str, d: int, moe: MoeConfig, *, bias: str | None, shared: str
) -> dict[str, tuple[int, ...]]:
    """An MoE layer's router, expert bias (`bias`, a name under `layer`; None: none), experts
    and shared expert (under `layer + shared`), with their shapes."""
    names = {layer + "mlp.gate.weight": (moe.num_experts, d)}
    if bias is not None:
        names[layer + bias] = (moe.num_experts,)
    for e in range(moe.num_experts):
        names.update(mlp_names(layer + f"mlp.experts.{e}.", d, moe.expert_hidden))
    if moe.shared_hidden:
        names.update(mlp_names(layer + shared, d, moe.shared_hidden))
    return names


def gate_up(t: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    """The fused [gate | up] weight of the MLP under `prefix` (its tensors consumed)."""
    return torch.cat([t.pop(prefix + "gate_proj.weight"), t.pop(prefix + "up_proj.weight")])


def stacked_moe(
    t: dict[str, torch.Tensor], layer: str, moe: MoeConfig, *, bias: str | None, shared: str
) -> MoeWeights:
    """The layer's experts stacked as `kernels.fused_moe` takes them (names as `moe_names`)."""
    experts = [f"{layer}mlp.experts.{e}." for e in range(moe.num_experts)]
    shared = layer + shared
    return MoeWeights(
        router=t.pop(layer + "mlp.gate.weight"),
        expert_bias=t.pop(layer + bias) if bias is not None else None,
        gate_up=torch.stack([gate_up(t, e) for e in experts]),
        down=torch.stack([t.pop(e + "down_proj.weight") for e in experts]),
        shared_gate_up=gate_up(t, shared) if moe.shared_hidden else None,
        shared_down=t.pop(shared + "down_proj.weight") if moe.shared_hidden else None,
    )
