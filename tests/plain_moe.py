"""Plain references of the official MoE layers, for the tests: LLaDA-MoE's whole model (one
unpacked sequence, the official per-expert loop) and LLaDA2's MoE layer.

Written from the facts of the official code (docs/models.md), sharing nothing with the engine:
`PlainMoeModel` plugs into tests/plain_reference.py's samplers (the official LLaDA `generate`
and the plain dual cache) in place of `PlainModel`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from tests.plain_reference import PlainModel


def swiglu(x: torch.Tensor, t: dict, prefix: str) -> torch.Tensor:
    """down(silu(gate x) * up x) of the MLP whose tensors are named prefix + gate_proj etc."""
    gate = F.linear(x, t[prefix + "gate_proj.weight"])
    up = F.linear(x, t[prefix + "up_proj.weight"])
    return F.linear(F.silu(gate) * up, t[prefix + "down_proj.weight"])


class PlainMoeModel(PlainModel):
    """LLaDA-MoE (LLaDAMoEModelLM) read from its official tensor names."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        raw = json.loads((path / "config.json").read_text())
        self.raw = raw
        self.t: dict[str, torch.Tensor] = {}
        for f in sorted(path.glob("*.safetensors")):
            self.t.update(load_file(str(f)))
        self.llada = False
        self.d, self.nl = raw["hidden_size"], raw["num_hidden_layers"]
        self.nh = raw["num_attention_heads"]
        self.nkv = raw.get("num_key_value_heads") or self.nh
        self.eps, self.theta = raw["rms_norm_eps"], raw["rope_theta"]
        self.hd = self.d // self.nh
        self.rot = int(self.hd * raw["partial_rotary_factor"])
        self.mask_id, self.eos_id = raw["mask_token_id"], raw["eos_token_id"]
        self.shifted = False
        self.top_k = raw["num_experts_per_tok"]

    def w(self, layer: int | None, name: str) -> torch.Tensor:
        if layer is None:
            top = {"embed": "model.embed_tokens", "final": "model.norm", "head": "lm_head"}
            return self.t[top[name] + ".weight"]
        names = {"norm1": "input_layernorm", "norm2": "post_attention_layernorm"}
        names.update({x: f"self_attn.{x}_proj" for x in "qkvo"})
        return self.t[f"model.layers.{layer}.{names[name]}.weight"]

    def b(self, layer: int, name: str) -> None:
        return None

    def rope(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """RoPE on the first `rot` dims of each head (rotate-half within them), the rest kept."""
        rot = self.rot
        inv = 1.0 / (self.theta ** (torch.arange(0, rot, 2).float() / rot))
        ang = pos.float()[:, None] * inv[None]
        ang = torch.cat([ang, ang], -1)
        cos, sin = ang.cos()[:, None].to(x.dtype), ang.sin()[:, None].to(x.dtype)
        xr, rest = x[..., :rot], x[..., rot:]
        half = rot // 2
        turned = torch.cat([-xr[..., half:], xr[..., :half]], -1)
        return torch.cat([xr * cos + turned * sin, rest], -1)

    def qkv(self, i: int, h: torch.Tensor, pos: torch.Tensor):
        q = F.linear(h, self.w(i, "q"))
        k = F.linear(h, self.w(i, "k"))
        if self.raw.get("qk_layernorm"):
            p = f"model.layers.{i}.self_attn."
            q = self.norm(q.reshape(-1, self.hd), self.t[p + "q_norm.weight"])
            k = self.norm(k.reshape(-1, self.hd), self.t[p + "k_norm.weight"])
        v = F.linear(h, self.w(i, "v"))
        clip = self.raw.get("clip_qkv")
        if clip is not None:
            q, k, v = q.clamp(-clip, clip), k.clamp(-clip, clip), v.clamp(-clip, clip)
        q = q.reshape(len(h), self.nh, self.hd)
        k = k.reshape(len(h), self.nkv, self.hd)
        return self.rope(q, pos), self.rope(k, pos), v.reshape(len(h), self.nkv, self.hd)

    def layer_tail(self, i: int, x: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        x = x + F.linear(att.reshape(len(x), -1), self.w(i, "o"))
        h = self.norm(x, self.w(i, "norm2"))
        p = f"model.layers.{i}."
        if not self.raw["moe_layer_freq"][i]:
            return x + swiglu(h, self.t, p + "mlp.")
        out = self.sparse_moe_block(h, p)
        if self.raw.get("shared_expert_intermediate_size") is not None:
            out = out + swiglu(h, self.t, p + "shared_expert.")
        return x + out

    def sparse_moe_block(self, h: torch.Tensor, p: str) -> torch.Tensor:
        """The official block: softmax in fp32 (+ bias), top-k, weights kept as they are and
        cast to the model dtype, experts looped in order, outputs index-added."""
        probs = torch.softmax(F.linear(h, self.t[p + "mlp.gate.weight"]).float(), dim=1)
        if self.raw.get("moe_router_enable_expert_bias"):
            probs = probs + self.t[p + "mlp.expert_bias"]
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)
        weights = weights.to(h.dtype)
        out = torch.zeros_like(h)
        for e in range(self.raw["num_experts"]):
            tok, slot = torch.where(chosen == e)
            if len(tok):
                y = swiglu(h[tok], self.t, f"{p}mlp.experts.{e}.") * weights[tok, slot, None]
                out.index_add_(0, tok, y.to(h.dtype))
        return out


@dataclass
class Llada2Layer:
    """The tensors and settings of one official LLaDA2 MoE layer (BailingMoeV2)."""

    t: dict  # "gate.weight", "gate.expert_bias", "experts.{e}.*", "shared_experts.*"
    num_experts: int
    top_k: int
    n_group: int
    topk_group: int
    routed_scaling_factor: float
    shared: bool


def llada2_moe_layer(h: torch.Tensor, m: Llada2Layer) -> torch.Tensor:
    """The official layer one token at a time: sigmoid scores; the bias only ranks; groups
    scored by their two best biased scores; weights = chosen unbiased scores over their sum
    (+1e-20) times the routed scaling; weighted sum in fp32; the shared experts added."""
    logits = F.linear(h.float(), m.t["gate.weight"].float())
    scores = torch.sigmoid(logits)
    per_group = m.num_experts // m.n_group
    out = torch.empty_like(h)
    for i in range(len(h)):
        biased = (scores[i] + m.t["gate.expert_bias"]).tolist()
        groups = []
        for g in range(m.n_group):
            best = sorted(biased[g * per_group : (g + 1) * per_group], reverse=True)
            groups.append((best[0] + best[1], g))
        kept = {g for _, g in sorted(groups, reverse=True)[: m.topk_group]}
        pool = [e for e in range(m.num_experts) if e // per_group in kept]
        chosen = sorted(pool, key=lambda e: -biased[e])[: m.top_k]
        s = [float(scores[i, e]) for e in chosen]
        total = sum(s) + 1e-20 if m.top_k > 1 else 1.0
        acc = torch.zeros(h.shape[1], dtype=torch.float32)
        for e, se in zip(chosen, s, strict=True):
            y = swiglu(h[i : i + 1], m.t, f"experts.{e}.")[0]
            acc += y.float() * (se / total * m.routed_scaling_factor)
        out[i] = acc.to(h.dtype)
    if m.shared:
        out = out + swiglu(h, m.t, "shared_experts.")
    return out


def random_llada2_layer(
    d: int, inter: int, *, num_experts: int, top_k: int, n_group: int, topk_group: int,
    scaling: float, shared: bool, seed: int, bias_scale: float = 0.0,
) -> Llada2Layer:  # fmt: skip
    """Random tensors of an official LLaDA2 MoE layer, named as in its state dict."""
    g = torch.Generator().manual_seed(seed)

    def w(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=g) / math.sqrt(shape[-1])

    t = {"gate.weight": w(num_experts, d) * 4.0}
    t["gate.expert_bias"] = bias_scale * torch.randn(num_experts, generator=g)
    names = [f"experts.{e}." for e in range(num_experts)] + (["shared_experts."] if shared else [])
    for p in names:
        t.update({p + "gate_proj.weight": w(inter, d), p + "up_proj.weight": w(inter, d)})
        t[p + "down_proj.weight"] = w(d, inter)
    return Llada2Layer(t, num_experts, top_k, n_group, topk_group, scaling, shared)
