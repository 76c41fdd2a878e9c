"""A plain reference of LLaDA2 for the tests: the official model's forward over a whole
canvas under the block-causal mask (no cache), its `generate` (LLaDA2.0) and LLaDA2.1's
editing loop, written from the facts of the official code (docs/models.md, "LLaDA2"), sharing
nothing with the engine.

Each step recomputes the canvas from position 0 up to the end of the current block, as the
official code does; the answer runs to and including the first EOS within gen_length.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from tests.plain_moe import Llada2Layer, llada2_moe_layer, swiglu

MAX_POST_STEPS = 16  # LLaDA2.1's default


class PlainLlada2:
    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        self.path = path
        raw = json.loads((path / "config.json").read_text())
        self.raw = raw
        self.t: dict[str, torch.Tensor] = {}
        for f in sorted(path.glob("*.safetensors")):
            self.t.update(load_file(str(f)))
        self.nh, self.nkv = raw["num_attention_heads"], raw["num_key_value_heads"]
        self.hd, self.eps = raw["head_dim"], raw["rms_norm_eps"]
        self.rot = int(self.hd * raw["partial_rotary_factor"])
        self.eos_id = raw["eos_token_id"]
        tok = json.loads((path / "tokenizer.json").read_text())
        self.mask_id = next(t["id"] for t in tok["added_tokens"] if t["content"] == "<|mask|>")

    def norm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)

    def rope(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """x [heads, L, hd]: rotate-half on the first `rot` dims, cos/sin in x's dtype."""
        rot = self.rot
        inv = 1.0 / (self.raw["rope_theta"] ** (torch.arange(0, rot, 2).float() / rot))
        ang = pos.float()[:, None] * inv[None]
        ang = torch.cat([ang, ang], -1)
        cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
        xr, rest = x[..., :rot], x[..., rot:]
        turned = torch.cat([-xr[..., rot // 2 :], xr[..., : rot // 2]], -1)
        return torch.cat([xr * cos + turned * sin, rest], -1)

    def moe_layer(self, i: int) -> Llada2Layer:
        p = f"model.layers.{i}.mlp."
        sub = {k[len(p) :]: v for k, v in self.t.items() if k.startswith(p)}
        r = self.raw
        return Llada2Layer(
            sub, r["num_experts"], r["num_experts_per_tok"], r["n_group"], r["topk_group"],
            r["routed_scaling_factor"], bool(r.get("num_shared_experts")),
        )  # fmt: skip

    def attention(self, i: int, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        a = f"model.layers.{i}.attention."
        L = len(h)
        qkv = F.linear(h, self.t[a + "query_key_value.weight"]).view(L, -1, self.hd)
        q, k, v = qkv.split([self.nh, self.nkv, self.nkv], dim=1)
        q = self.norm(q, self.t[a + "query_layernorm.weight"]).transpose(0, 1)
        k = self.norm(k, self.t[a + "key_layernorm.weight"]).transpose(0, 1)
        pos = torch.arange(L)
        q, k = self.rope(q, pos), self.rope(k, pos)
        g = self.nh // self.nkv
        k, v = k.repeat_interleave(g, 0), v.transpose(0, 1).repeat_interleave(g, 0)
        s = q @ k.transpose(1, 2) / math.sqrt(self.hd) + mask
        att = torch.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype) @ v
        return F.linear(att.transpose(0, 1).reshape(L, -1), self.t[a + "dense.weight"])

    def forward(self, ids: torch.Tensor, block: int) -> torch.Tensor:
        """fp32 logits [L, V] of ids (positions 0..L-1) under the block-causal mask."""
        L = len(ids)
        blk = torch.arange(L) // block
        mask = torch.where(blk[None, :] <= blk[:, None], 0.0, -torch.inf)
        x = self.t["model.word_embeddings.weight"][ids]
        for i in range(self.raw["num_hidden_layers"]):
            p = f"model.layers.{i}."
            x = x + self.attention(i, self.norm(x, self.t[p + "input_layernorm.weight"]), mask)
            h = self.norm(x, self.t[p + "post_attention_layernorm.weight"])
            if i < self.raw["first_k_dense_replace"]:
                x = x + swiglu(h, self.t, p + "mlp.")
            else:
                x = x + llada2_moe_layer(h, self.moe_layer(i))
        x = self.norm(x, self.t["model.norm.weight"])
        return F.linear(x, self.t["lm_head.weight"]).float()


def transfer_schedule(block: int, steps: int) -> list[int]:
    base, extra = divmod(block, steps)
    return [base + (1 if s < extra else 0) for s in range(steps)]


def _greedy(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """temperature 0: the argmax of the softmax and its probability."""
    p = torch.softmax(logits, dim=-1)
    x0 = p.argmax(dim=-1)
    return x0, p.gather(-1, x0[:, None])[:, 0]


def _answer(x: torch.Tensor, prompt_len: int, gen_length: int, eos: int) -> list[int]:
    gen = x[prompt_len : prompt_len + gen_length].tolist()
    return gen[: gen.index(eos) + 1] if eos in gen else gen


def generate(
    m: PlainLlada2, prompt: list[int], *, gen_length: int, block_length: int, steps: int,
    threshold: float, minimal_topk: int = 1, eos_early_stop: bool = False,
) -> list[int]:  # fmt: skip
    """The official LLaDA2.0 `generate` at temperature 0: its answer token ids."""
    steps = min(steps, gen_length // minimal_topk)
    P, B = len(prompt), block_length
    n_blocks = (P + gen_length + B - 1) // B
    x = torch.full((n_blocks * B,), m.mask_id, dtype=torch.long)
    x[:P] = torch.tensor(prompt)
    plan = transfer_schedule(B, steps)
    for b in range(P // B, n_blocks):
        end = (b + 1) * B
        for s in range(steps):
            active = x[end - B : end] == m.mask_id
            if not active.any():
                break
            x0, p = _greedy(m.forward(x[:end], B)[-B:])
            conf = torch.where(active, p, -torch.inf)
            high = conf > threshold
            if int(high.sum()) >= plan[s]:
                take = high
            else:
                take = torch.zeros(B, dtype=torch.bool)
                take[torch.topk(conf, min(plan[s], int(active.sum()))).indices] = True
            x[end - B : end][take] = x0[take]
            if eos_early_stop and (x0[take] == m.eos_id).any():
                eos = (x[P:] == m.eos_id).nonzero()[0, 0].item() + P
                if (x[P:eos] != m.mask_id).all():
                    return x[P : eos + 1].tolist()[:gen_length]
        if (x[P:end] == m.eos_id).any():
            break
    return _answer(x, P, gen_length, m.eos_id)


def generate_editing(
    m: PlainLlada2, prompt: list[int], *, gen_length: int, block_length: int,
    threshold: float, editing_threshold: float, eos_early_stop: bool = False,
) -> list[int]:  # fmt: skip
    """LLaDA2.1's `generate` at temperature 0 (one mask committed at least per step, edits of
    committed non-prompt tokens of the block, up to 16 steps after the last mask)."""
    P, B = len(prompt), block_length
    n_blocks = (P + gen_length + B - 1) // B
    x = torch.full((n_blocks * B,), m.mask_id, dtype=torch.long)
    x[:P] = torch.tensor(prompt)
    for b in range(P // B, n_blocks):
        start, end = b * B, (b + 1) * B
        in_prompt = torch.arange(start, end) < P
        post = 0
        while True:
            old = x[start:end].clone()
            active = old == m.mask_id
            if not active.any():
                post += 1
            if post > MAX_POST_STEPS:
                break
            x0, p = _greedy(m.forward(x[:end], B)[-B:])
            take = torch.zeros(B, dtype=torch.bool)
            if active.any():
                conf = torch.where(active, p, -torch.inf)
                high = (conf > threshold) & active
                if int(high.sum()) >= 1:
                    take = high
                else:
                    take[torch.topk(conf, 1).indices] = True
            edit = ~active & ~in_prompt & (p > editing_threshold) & (x0 != old)
            x[start:end][take | edit] = x0[take | edit]
            if not active.any() and not edit.any():
                break
        done = x[P:end]
        if eos_early_stop and not (done == m.mask_id).any() and (done == m.eos_id).any():
            break
    return _answer(x, P, gen_length, m.eos_id)
