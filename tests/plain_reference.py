"""An independent, deliberately plain implementation of the models and samplers for the tests.

It reads the checkpoint's tensors by their Hugging Face names and runs one unpacked sequence
at a time, with a full forward every step (the official LLaDA sampler) or a plain "dual cache"
with brute-force head selection (the sparse algorithm of docs/design.md §10). It shares no code with
the engine except the definition of the random stream (`uniform64`), so agreement means the
engine's packing, paging, batching and kernels change nothing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from dllmserve.kernels.noise import uniform64


class PlainModel:
    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        raw = json.loads((path / "config.json").read_text())
        self.t: dict[str, torch.Tensor] = {}
        for f in sorted(path.glob("*.safetensors")):
            self.t.update(load_file(str(f)))
        self.llada = raw.get("model_type") == "llada"
        if self.llada:
            self.d, self.nl, self.nh = raw["d_model"], raw["n_layers"], raw["n_heads"]
            self.nkv = raw.get("n_kv_heads") or self.nh
            self.eps, self.theta = raw["rms_norm_eps"], raw["rope_theta"]
        else:
            self.d, self.nl = raw["hidden_size"], raw["num_hidden_layers"]
            self.nh, self.nkv = raw["num_attention_heads"], raw["num_key_value_heads"]
            self.eps, self.theta = raw["rms_norm_eps"], raw["rope_theta"]
        self.hd = self.d // self.nh
        self.mask_id = raw["mask_token_id"]
        self.eos_id = raw["eos_token_id"]
        self.shifted = not self.llada

    def w(self, layer: int | None, name: str) -> torch.Tensor:
        if self.llada:
            names = {
                "norm1": "attn_norm",
                "q": "q_proj",
                "k": "k_proj",
                "v": "v_proj",
                "o": "attn_out",
                "norm2": "ff_norm",
                "gate": "ff_proj",
                "up": "up_proj",
                "down": "ff_out",
            }
            if layer is None:
                top = {"embed": "wte", "final": "ln_f", "head": "ff_out"}
                return self.t[f"model.transformer.{top[name]}.weight"]
            return self.t[f"model.transformer.blocks.{layer}.{names[name]}.weight"]
        names = {
            "norm1": "input_layernorm",
            "q": "self_attn.q_proj",
            "k": "self_attn.k_proj",
            "v": "self_attn.v_proj",
            "o": "self_attn.o_proj",
            "norm2": "post_attention_layernorm",
            "gate": "mlp.gate_proj",
            "up": "mlp.up_proj",
            "down": "mlp.down_proj",
        }
        if layer is None:
            top = {"embed": "model.embed_tokens", "final": "model.norm", "head": "lm_head"}
            return self.t[f"{top[name]}.weight"]
        return self.t[f"model.layers.{layer}.{names[name]}.weight"]

    def b(self, layer: int, name: str) -> torch.Tensor | None:
        if self.llada:
            return None
        return self.t[f"model.layers.{layer}.self_attn.{name}_proj.bias"]

    def norm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        var = x.float().pow(2).mean(-1, keepdim=True)
        return w * (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype)

    def rope(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """x [L, heads, hd] at absolute positions pos [L]."""
        inv = 1.0 / (self.theta ** (torch.arange(0, self.hd, 2).float() / self.hd))
        ang = pos.float()[:, None] * inv[None]
        ang = torch.cat([ang, ang], -1)
        cos, sin = ang.cos()[:, None], ang.sin()[:, None]
        half = self.hd // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], -1)
        return x * cos + rot * sin

    def qkv(self, i: int, h: torch.Tensor, pos: torch.Tensor):
        q = F.linear(h, self.w(i, "q"), self.b(i, "q")).view(-1, self.nh, self.hd)
        k = F.linear(h, self.w(i, "k"), self.b(i, "k")).view(-1, self.nkv, self.hd)
        v = F.linear(h, self.w(i, "v"), self.b(i, "v")).view(-1, self.nkv, self.hd)
        return self.rope(q, pos), self.rope(k, pos), v

    def attend(self, q: torch.Tensor, keys: list[torch.Tensor], vals: list[torch.Tensor]):
        """q [M, H, hd]; keys/vals: per kv head, [N_g, hd]. Plain softmax attention."""
        g = self.nh // self.nkv
        out = torch.empty_like(q)
        for h in range(self.nh):
            kk, vv = keys[h // g], vals[h // g]
            s = (q[:, h] @ kk.T) / math.sqrt(self.hd)
            out[:, h] = torch.softmax(s, -1) @ vv
        return out

    def layer_tail(self, i: int, x: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        x = x + F.linear(att.reshape(len(x), -1), self.w(i, "o"))
        h = self.norm(x, self.w(i, "norm2"))
        return x + F.linear(
            F.silu(F.linear(h, self.w(i, "gate"))) * F.linear(h, self.w(i, "up")), self.w(i, "down")
        )

    def forward(self, ids: torch.Tensor, capture: list | None = None) -> torch.Tensor:
        """Logits [L, V] of a whole sequence; `capture` collects each layer's (q, k, v)."""
        pos = torch.arange(len(ids))
        x = self.w(None, "embed")[ids]
        for i in range(self.nl):
            q, k, v = self.qkv(i, self.norm(x, self.w(i, "norm1")), pos)
            if capture is not None:
                capture.append((q, k, v))
            att = self.attend(
                q, [k[:, g] for g in range(self.nkv)], [v[:, g] for g in range(self.nkv)]
            )
            x = self.layer_tail(i, x, att)
        return F.linear(self.norm(x, self.w(None, "final")), self.w(None, "head"))

    def forward_window(self, ids: torch.Tensor, ws: int, kept: list) -> torch.Tensor:
        """Logits of the window tokens ids (at positions ws..) against kept K/V per layer/head."""
        pos = torch.arange(ws, ws + len(ids))
        x = self.w(None, "embed")[ids]
        for i in range(self.nl):
            q, k, v = self.qkv(i, self.norm(x, self.w(i, "norm1")), pos)
            kk = [torch.cat([kept[i][0][g], k[:, g]]) for g in range(self.nkv)]
            vv = [torch.cat([kept[i][1][g], v[:, g]]) for g in range(self.nkv)]
            x = self.layer_tail(i, x, self.attend(q, kk, vv))
        return F.linear(self.norm(x, self.w(None, "final")), self.w(None, "head"))


def brute_force_select(
    q_win, k_seq, ws: int, we: int, n: int, head_select: bool, pool: int, nh: int, nkv: int
) -> list[list[int]]:
    """Per kv head, the kept positions, by plain loops over heads and candidates."""
    hd = q_win.shape[-1]
    g = nh // nkv
    cands = [p for p in range(len(k_seq)) if not ws <= p < we]
    qbar = q_win.float().mean(0)
    out = []
    for kvh in range(nkv):
        heads = range(kvh * g, (kvh + 1) * g) if head_select else range(nh)
        scores = []
        for p in cands:
            vals = [float(qbar[h] @ k_seq[p, h // g].float()) / math.sqrt(hd) for h in heads]
            scores.append(max(vals) if head_select else sum(vals))
        w = pool // 2
        pooled = [max(scores[max(0, c - w) : c + w + 1]) for c in range(len(cands))]
        order = sorted(range(len(cands)), key=lambda c: (-pooled[c], c))[:n]
        out.append(sorted(cands[c] for c in order))
    return out


def transfer_plan(masks: int, steps: int) -> list[int]:
    base, extra = divmod(masks, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def sample_step(
    logits,
    x,
    block,
    step,
    seed,
    temperature,
    remasking,
    k,
    mask_id,
    eos_id,
    eot_id,
    gen_start,
    logits_eos_inf=False,
    conf_eos_eot_inf=False,
):
    """One official LLaDA sampling step on a single sequence (numpy-plain, float64 Gumbel)."""
    logits = logits.clone()
    logits[:, mask_id] = -math.inf
    if logits_eos_inf:
        logits[:, eos_id] = -math.inf
    s, e = block
    L, V = logits.shape
    if temperature > 0:
        u = uniform64(
            torch.tensor(seed),
            torch.tensor(step),
            (torch.arange(L) - gen_start)[:, None],
            torch.arange(V)[None],
        )
        noisy = logits.double().exp() / (-torch.log(u)) ** temperature
    else:
        noisy = logits
    x0 = noisy.argmax(-1)
    if conf_eos_eot_inf:
        logits[:, eot_id] = -math.inf
        if temperature == 0:
            logits[:, eos_id] = -math.inf
    if remasking == "low_confidence":
        conf = torch.softmax(logits.float(), -1).gather(-1, x0[:, None])[:, 0].double()
    else:
        u = uniform64(
            torch.tensor(seed), torch.tensor(step), torch.arange(L) - gen_start, torch.tensor(V)
        )
        conf = u.float().double()
    masked = x == mask_id
    conf[:s] = -math.inf
    conf[e:] = -math.inf
    conf = torch.where(masked, conf, -math.inf)
    picks = sorted(range(s, e), key=lambda p: (-float(conf[p]), p))
    picks = [p for p in picks if masked[p]][:k]
    for p in picks:
        x[p] = x0[p]


def official_generate(
    m: PlainModel,
    prompt: list[int],
    gen_length: int,
    block_length: int,
    steps: int,
    temperature: float = 0.0,
    cfg_scale: float = 0.0,
    remasking: str = "low_confidence",
    seed: int = 0,
    eot_id: int | None = None,
    logits_eos_inf: bool = False,
    conf_eos_eot_inf: bool = False,
) -> list[int]:
    """The official LLaDA `generate` (full forward every step), on one sequence."""
    P = len(prompt)
    x = torch.tensor(prompt + [m.mask_id] * gen_length)
    n_blocks = -(-gen_length // block_length)
    per_block = transfer_plan(steps, n_blocks)
    g = 0
    for b in range(n_blocks):
        s, e = P + b * block_length, min(P + (b + 1) * block_length, P + gen_length)
        plan = transfer_plan(e - s, per_block[b])
        for i in range(per_block[b]):
            logits = m.forward(x)
            if cfg_scale > 0:
                un_x = x.clone()
                un_x[:P] = m.mask_id
                un = m.forward(un_x)
                logits = un + (cfg_scale + 1) * (logits - un)
            if m.shifted:
                logits = shift(logits)
            sample_step(
                logits,
                x,
                (s, e),
                g,
                seed,
                temperature,
                remasking,
                plan[i],
                m.mask_id,
                m.eos_id,
                eot_id,
                P,
                logits_eos_inf,
                conf_eos_eot_inf,
            )
            g += 1
    return x[P:].tolist()


def shift(logits: torch.Tensor) -> torch.Tensor:
    """Dream: the logit of position i is the output at i-1 (position 0 keeps its own)."""
    return torch.cat([logits[:1], logits[:-1]])


def sparse_generate(
    m: PlainModel,
    prompt: list[int],
    gen_length: int,
    block_length: int,
    steps: int,
    ratio: float,
    delay: int,
    head_select: bool = True,
    pool: int = 3,
    temperature: float = 0.0,
    seed: int = 0,
    record: list | None = None,
    sampler=None,
) -> list[int]:
    """The sparse algorithm with a plain dual cache and brute-force selection. `sampler`
    replaces LLaDA's step: called as sampler(logits, x, (s, e), step, i, steps_in_block)."""
    from dllmserve.sparse.state import kept_count

    P = len(prompt)
    L = P + gen_length
    x = torch.tensor(prompt + [m.mask_id] * gen_length)
    n_blocks = -(-gen_length // block_length)
    per_block = transfer_plan(steps, n_blocks)
    g = 0
    for b in range(n_blocks):
        s, e = P + b * block_length, min(P + (b + 1) * block_length, P + gen_length)
        ws = s - int(m.shifted)
        plan = transfer_plan(e - s, per_block[b])
        kept = None
        for i in range(per_block[b]):
            if i <= delay:
                cap: list = []
                logits = m.forward(x, cap)
                if m.shifted:
                    logits = shift(logits)
                if i == delay:
                    n = kept_count(L - (e - ws), ratio)
                    kept = []
                    for q, k, v in cap:
                        heads = brute_force_select(
                            q[ws:e], k, ws, e, n, head_select, pool, m.nh, m.nkv
                        )
                        if record is not None:
                            record.append(heads)
                        kept.append(
                            (
                                [k[heads[h], h] for h in range(m.nkv)],
                                [v[heads[h], h] for h in range(m.nkv)],
                            )
                        )
            else:
                wl = m.forward_window(x[ws:e], ws, kept)
                logits = torch.zeros(L, wl.shape[-1])
                if m.shifted:
                    logits[s:e] = wl[:-1]
                else:
                    logits[s:e] = wl
            if sampler is not None:
                sampler(logits, x, (s, e), g, i, per_block[b])
                g += 1
                continue
            sample_step(
                logits,
                x,
                (s, e),
                g,
                seed,
                temperature,
                "low_confidence",
                plan[i],
                m.mask_id,
                m.eos_id,
                None,
                P,
            )
            g += 1
    return x[P:].tolist()
