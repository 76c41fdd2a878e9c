"""Train the shipped tiny LLaDA (dllmserve/assets/tiny-llada) with the LLaDA objective.

    python benchmarks/data/fortunes.py                      # natural-text corpus (Debian)
                                                            # (git-ignored: carry it to a GPU)
    python benchmarks/train_tiny.py --out /tmp/tiny --minutes 9     # on one GPU
    python benchmarks/train_tiny.py --out /tmp/t --smoke            # seconds, on CPU

Masked diffusion as in LLaDA: per row t ~ U(eps, 1); each target token is replaced by the
mask with probability t; cross-entropy on the masked positions weighted 1/t, normalised by the
row's target count. Chat rows (the synthetic tasks of `dllmserve.assets.tasks` and short
fortunes as answers) mask only the answer region, which is the answer, <|eot_id|>, then
<|endoftext|> up to a gen length of 32/64/128, as LLaDA Instruct's SFT does, so that
stop_at_eos works. Pretraining rows (fortune text) mask every position. Attention is
bidirectional (SDPA, no causal mask; a key mask hides row padding). The parameter names are
the real checkpoint's, so the state dict is written as it is.

With --steps 0 the step count is set from --minutes after timing the first steps; the card
records the count, and --steps N with the same seed reproduces the data order. Every
--probe-every steps it reads the held-out recall values in one forward (a cheap view of the
lookup) and saves the checkpoint, so a run stopped early leaves its latest weights. --init
continues from an earlier stage's checkpoint (fresh optimizer and schedule; give it another
--seed so the data differ from the first stage's).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import string
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from dllmserve.assets import tasks
from dllmserve.testing.tiny_models import (
    LLADA_SPECIALS,
    build_byte_tokenizer,
    llada_config,
    llada_tokenizer_config,
)

CORPUS = Path(__file__).with_name("data") / "fortunes.txt"
BUCKETS = (128, 256, 512, 1024, 2048)  # row lengths; recall contexts fill each bucket's range
BUCKET_WEIGHTS = "3,3,2,1.5,1.5"  # batches per bucket (each batch the same token slots)
GEN_LENGTHS = (32, 64, 128)
EPS = 1e-3
CHAT_PROMPTS = (
    "Tell me something.",
    "Say something wise.",
    "Give me a quote.",
    "Tell me a fortune.",
    "What do you think?",
    "Say something about {topic}.",
    "Tell me something about {topic}.",
    "What do you know about {topic}?",
    "Give me a quote about {topic}.",
    "Any thoughts on {topic}?",
)
TOPICS = ("life", "work", "computers", "science", "love", "people", "wisdom", "the world")


@dataclass
class Arch:
    d_model: int = 256
    n_layers: int = 8
    n_heads: int = 8
    mlp_hidden: int = 704
    max_len: int = 4096
    rope_theta: float = 10000.0


# ---- tokenizer ---------------------------------------------------------------------------------
class ByteCodec:
    """Vectorised ASCII encoding that matches the shipped tokenizer.json id for id."""

    def __init__(self) -> None:
        self.tok, self.special = build_byte_tokenizer(LLADA_SPECIALS)
        self.table = np.array([self.tok.encode(chr(b)).ids[0] for b in range(128)], np.int64)
        probe = "Hello, world!\nabc: 0123 ~{}|"
        assert self.encode(probe) == self.tok.encode(probe).ids, "byte table != tokenizer"

    @property
    def vocab(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.table[np.frombuffer(text.encode("ascii"), np.uint8)].tolist()

    def chat(self, question: str) -> list[int]:
        """Token ids of `tasks.chat_prompt(question)`."""
        s = self.special
        return (
            [s[tasks.BOS], s[tasks.SOH]]
            + self.encode("user")
            + [s[tasks.EOH]]
            + self.encode("\n\n" + question.strip())
            + [s[tasks.EOT], s[tasks.SOH]]
            + self.encode("assistant")
            + [s[tasks.EOH]]
            + self.encode("\n\n")
        )


# ---- data --------------------------------------------------------------------------------------
class Rows(torch.utils.data.IterableDataset):
    """Endless batches: (ids [B, L], target mask [B, L], valid length [B]); one bucket L each.

    Every batch holds about `tokens_per_batch` token slots, so short buckets carry many rows.
    With `end_weights`, the bucket weights move from `bucket_weights` to them over `seconds`
    (each worker's own clock): a curriculum from short lists to long ones.
    The mix, by row (`mix`, the defaults): 10 % fortune text (pretraining), 30 % recall drills,
    and for the rest chat rows: in the short buckets copy / addition / fortune answers and
    short recall, in the long ones recall whose list fills the bucket. The chat recall answer
    has 4 useful targets in up to 2 000 prompt tokens, too little signal to learn the lookup
    from; the drills give one target per 3 prompt tokens with the same lookup (find the line
    whose key matches, copy its value), in episodes of log-uniform size so short lists are
    learned first.
    """

    def __init__(
        self,
        seed: int,
        tokens_per_batch: int,
        fortunes: list[str],
        smoke: bool,
        bucket_weights: tuple[float, ...],
        mix: tuple[float, float] = (0.1, 0.3),
        end_weights: tuple[float, ...] | None = None,
        seconds: float = 0.0,
    ):
        self.seed = seed
        self.end_weights = end_weights or bucket_weights
        self.seconds = seconds
        self.text_share, self.drill_share = mix
        self.weights = bucket_weights
        self.tokens = tokens_per_batch
        self.fortunes = fortunes
        self.text = "\n\n".join(fortunes)
        self.buckets = BUCKETS[:2] if smoke else BUCKETS

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid = info.id if info is not None else 0
        rng = random.Random(self.seed * 1000 + wid)
        codec = ByteCodec()
        start = time.monotonic()
        while True:
            L = rng.choices(self.buckets, weights=self._weights(time.monotonic() - start))[0]
            yield self._batch(rng, codec, L, max(1, self.tokens // L))

    def _weights(self, elapsed: float) -> list[float]:
        """Bucket weights moved linearly from the start's to the end's over the run's time."""
        f = min(1.0, elapsed / self.seconds) if self.seconds else 0.0
        pairs = zip(self.weights, self.end_weights, strict=True)
        return [a + (b - a) * f for a, b in pairs][: len(self.buckets)]

    def _batch(self, rng: random.Random, codec: ByteCodec, L: int, B: int):
        ids = torch.full((B, L), codec.special[tasks.EOS], dtype=torch.long)
        target = torch.zeros((B, L), dtype=torch.bool)
        length = torch.zeros(B, dtype=torch.long)
        for r in range(B):
            row, targets = self._row(rng, codec, L)
            n = len(row)
            ids[r, :n] = torch.tensor(row)
            target[r, :n] = torch.from_numpy(targets)
            length[r] = n
        return ids, target, length

    def _row(self, rng: random.Random, codec: ByteCodec, L: int) -> tuple[list[int], np.ndarray]:
        """One row of at most L tokens and which of its positions are targets."""
        kind = rng.random()
        if kind < self.text_share:  # pretraining: a corpus window, every position a target
            i = rng.randrange(len(self.text) - L)
            return codec.encode(self.text[i : i + L]), np.ones(L, bool)
        kind -= self.text_share
        if kind < self.drill_share:
            return recall_drill(rng, codec, L)
        kind -= self.drill_share  # the chat rows: 7/12 of them short tasks where they fit
        if L <= 256 and kind < (1 - self.text_share - self.drill_share) * 7 / 12:
            ex = rng.choices((tasks.copy, tasks.add, self._chat), weights=(4, 4, 2))[0](rng)
            row = chat_row(rng, codec, ex, L)
            if row is not None:
                return row
        lo = 48 if L == self.buckets[0] else L // 2 - 32
        row = chat_row(rng, codec, tasks.recall(rng, rng.randint(lo, L - 32)), L)
        assert row is not None, "a recall prompt of at most L - 32 tokens fits"
        return row

    def _chat(self, rng: random.Random) -> tasks.Example:
        q = rng.choice(CHAT_PROMPTS).format(topic=rng.choice(TOPICS))
        short = [f for f in (rng.choice(self.fortunes) for _ in range(8)) if len(f) <= 120]
        return tasks.Example("chat", q, short[0] if short else "Nothing is certain.")


def chat_row(
    rng: random.Random, codec: ByteCodec, ex: tasks.Example, L: int
) -> tuple[list[int], np.ndarray] | None:
    """Prompt + answer + <|eot_id|> + EOS fill to a gen length; the answer region is the target.

    The gen length is the answer's own class (70 %) or the next one, as long as it fits L;
    None when the example does not fit at all (a long copy in the 128 bucket).
    """
    prompt = codec.chat(ex.question)
    answer = codec.encode(ex.answer) + [codec.special[tasks.EOT]]
    fits = [g for g in GEN_LENGTHS if len(answer) <= g and len(prompt) + g <= L]
    if not fits:
        return None
    g = fits[0] if len(fits) == 1 or rng.random() < 0.7 else fits[1]
    answer += [codec.special[tasks.EOS]] * (g - len(answer))
    targets = np.zeros(len(prompt) + g, bool)
    targets[len(prompt) :] = True
    return prompt + answer, targets


def recall_drill(rng: random.Random, codec: ByteCodec, L: int) -> tuple[list[int], np.ndarray]:
    """Episodes of `key: value` lines, then lines repeating some keys; their values are targets.

    Episode sizes are log-uniform from 3 lines to the whole row, so a model first learns the
    lookup over a few lines and then over hundreds (the far end of the 2 048-token prompts).
    """
    line = 11  # "abcd: 1234\n"
    row: list[int] = []
    targets: list[bool] = []
    while L - len(row) >= 3 * line:
        room = (L - len(row)) // line
        lines = max(3, round(math.exp(rng.uniform(math.log(3), math.log(room)))))
        n_keys = max(2, (2 * lines) // 3)
        keys = ["".join(rng.choices(string.ascii_lowercase, k=4)) for _ in range(n_keys)]
        values = [f"{rng.randrange(10_000):04d}" for _ in keys]
        text = "".join(f"{k}: {v}\n" for k, v in zip(keys, values, strict=True))
        row += codec.encode(text)
        targets += [False] * len(text)
        for _ in range(lines - n_keys):
            j = rng.randrange(n_keys)
            row += codec.encode(f"{keys[j]}: {values[j]}\n")
            targets += [False] * 6 + [True] * 4 + [False]
    return row, np.array(targets, bool)


# ---- model (LLaDA architecture, the real parameter names) --------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class Block(nn.Module):
    def __init__(self, a: Arch) -> None:
        super().__init__()
        d, h = a.d_model, a.mlp_hidden
        self.n_heads = a.n_heads
        self.attn_norm, self.ff_norm = RMSNorm(d), RMSNorm(d)
        self.q_proj, self.k_proj, self.v_proj, self.attn_out = (
            nn.Linear(d, d, bias=False) for _ in range(4)
        )
        self.ff_proj, self.up_proj = nn.Linear(d, h, bias=False), nn.Linear(d, h, bias=False)
        self.ff_out = nn.Linear(h, d, bias=False)

    def forward(self, x, cos, sin, mask):
        B, L, d = x.shape
        h = self.attn_norm(x)
        q, k, v = (p(h).view(B, L, self.n_heads, -1).transpose(1, 2) for p in self._qkv())
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.attn_out(att.transpose(1, 2).reshape(B, L, d))
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))

    def _qkv(self):
        return self.q_proj, self.k_proj, self.v_proj


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE in fp32, cast back (docs/models.md)."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    return (xf * cos + torch.cat([-x2, x1], dim=-1) * sin).to(x.dtype)


class Transformer(nn.Module):
    def __init__(self, a: Arch, rows: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(rows, a.d_model)
        self.blocks = nn.ModuleList(Block(a) for _ in range(a.n_layers))
        self.ln_f = RMSNorm(a.d_model)
        self.ff_out = nn.Linear(a.d_model, rows, bias=False)


class TinyLLaDA(nn.Module):
    def __init__(self, a: Arch, rows: int) -> None:
        super().__init__()
        self.arch = a
        self.model = nn.Module()
        self.model.transformer = Transformer(a, rows)
        hd = a.d_model // a.n_heads
        inv = 1.0 / (a.rope_theta ** (torch.arange(0, hd, 2).float() / hd))
        freqs = torch.outer(torch.arange(a.max_len).float(), inv)
        self.register_buffer("cos", torch.cat([freqs, freqs], -1).cos(), persistent=False)
        self.register_buffer("sin", torch.cat([freqs, freqs], -1).sin(), persistent=False)
        for name, p in self.named_parameters():  # GPT-2 style: residual outputs scaled down
            if p.dim() == 2:
                residual = "blocks" in name and name.endswith(("attn_out.weight", "ff_out.weight"))
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * a.n_layers) if residual else 0.02)

    def forward(self, ids: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        t = self.model.transformer
        L = ids.shape[1]
        cos, sin = self.cos[:L], self.sin[:L]
        keys = torch.arange(L, device=ids.device)[None, :] < length[:, None]
        mask = keys[:, None, None, :] if bool((length < L).any()) else None
        x = t.wte(ids)
        for blk in t.blocks:
            x = blk(x, cos, sin, mask)
        return t.ff_out(t.ln_f(x))


def diffusion_loss(model, ids, target, length, mask_id, gen: torch.Generator, elbo: bool = True):
    """LLaDA loss: mask targets w.p. t ~ U(eps, 1), CE on masked / t, per-row mean over targets.

    With `elbo` False the masked tokens' CE is averaged unweighted: the same optimum (the
    conditional at every mask ratio) without the 1/t factor's variance from rows of small t.
    """
    B, L = ids.shape
    t = EPS + (1 - EPS) * torch.rand(B, 1, device=ids.device, generator=gen)
    masked = target & (torch.rand(B, L, device=ids.device, generator=gen) < t)
    x = torch.where(masked, mask_id, ids)
    logits = model(x, length)
    ce = F.cross_entropy(logits[masked].float(), ids[masked], reduction="none")
    if not elbo:
        return ce.mean()
    w = torch.zeros(B, L, device=ids.device)
    w[masked] = ce / t.expand(B, L)[masked]
    return (w.sum(1) / target.sum(1).clamp(min=1)).mean()


# ---- export ------------------------------------------------------------------------------------
def export(model: TinyLLaDA, codec: ByteCodec, out: Path, dtype: torch.dtype) -> None:
    """config.json + model.safetensors + tokenizer files, in the real LLaDA layout."""
    a = model.arch
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    s = codec.special
    rows = model.model.transformer.wte.weight.shape[0]
    config = llada_config(
        d_model=a.d_model, n_layers=a.n_layers, n_heads=a.n_heads, n_kv_heads=a.n_heads,
        mlp_hidden=a.mlp_hidden, vocab=codec.vocab, emb_rows=rows, mask_id=s[tasks.MASK],
        eos_id=s[tasks.EOS], max_len=a.max_len, rope_theta=a.rope_theta, dtype=dtype,
    )  # fmt: skip
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    codec.tok.save(str(out / "tokenizer.json"))
    tok_cfg = llada_tokenizer_config(a.max_len)
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")


def padded(rows: list[tuple[list[int], int]], codec: ByteCodec, device):
    """(ids [B, L], target [B, L], length [B]) on `device` for rows of (tokens, first target):
    EOS padding to the longest row, targets from the given offset to the row's end."""
    L = max(len(r) for r, _ in rows)
    ids = torch.full((len(rows), L), codec.special[tasks.EOS], dtype=torch.long)
    target = torch.zeros_like(ids, dtype=torch.bool)
    length = torch.tensor([len(r) for r, _ in rows])
    for i, (r, start) in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        target[i, start : len(r)] = True
    return ids.to(device), target.to(device), length.to(device)


@torch.no_grad()
def heldout_loss(model, codec, fortunes, device, seed: int = 7) -> dict[str, float]:
    """Masked-token loss per task on fixed held-out rows (t on a fixed grid, no 1/t weight)."""
    text = "\n\n".join(fortunes)
    rng = random.Random(seed)
    out: dict[str, float] = {}
    for task in (*tasks.TASKS, "text"):
        rows: list[tuple[list[int], int]] = []
        if task == "text":
            for _ in range(32):
                j = rng.randrange(len(text) - 256)
                rows.append((codec.encode(text[j : j + 256]), 0))
        for ex in tasks.held_out(task, 32, 512, seed) if task != "text" else []:
            p = codec.chat(ex.question)
            a = codec.encode(ex.answer) + [codec.special[tasks.EOT]]
            rows.append((p + a, len(p)))
        ids, target, length = padded(rows, codec, device)
        total, count = 0.0, 0
        g = torch.Generator(device=device).manual_seed(seed)
        for t in (0.1, 0.3, 0.5, 0.7, 0.9):
            masked = target & (torch.rand(ids.shape, device=device, generator=g) < t)
            with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(torch.where(masked, codec.special[tasks.MASK], ids), length)
            total += F.cross_entropy(logits[masked].float(), ids[masked], reduction="sum").item()
            count += int(masked.sum())
        out[task] = total / max(count, 1)
    return out


@torch.no_grad()
def recall_probe(model, codec, device, contexts=tasks.CONTEXTS, n: int = 32) -> dict[str, dict]:
    """Exact match and digit accuracy of the held-out recall values, read in one forward with
    every digit masked.

    A cheap view of the lookup while training runs (the answer's restated key is given, so this
    is the lookup alone); the quality benchmark decodes for real.
    """
    out: dict[str, dict] = {}
    digits = torch.tensor(codec.table[ord("0") : ord("9") + 1], device=device)
    for context in contexts:
        rows = []
        for ex in tasks.held_out("recall", n, context):
            p = codec.chat(ex.question)
            rows.append((p + codec.encode(ex.answer), len(p)))
        ids, answer, length = padded(rows, codec, device)
        value = answer & torch.isin(ids, digits)
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(torch.where(value, codec.special[tasks.MASK], ids), length)
        hit = logits.argmax(-1) == ids
        out[str(context)] = {
            "exact": round((hit | ~value).all(1).float().mean().item(), 3),
            "digits": round(hit[value].float().mean().item(), 3),
        }
    return out


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine from 1 to 0.1 over the planned steps (constant until known)."""
    if step < warmup or not total:
        return min(1.0, (step + 1) / warmup)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def parse_weights(ap: argparse.ArgumentParser, flag: str, text: str) -> tuple[float, ...]:
    weights = tuple(float(w) for w in text.split(","))
    if len(weights) != len(BUCKETS) or min(weights) < 0 or not sum(weights):
        ap.error(f"{flag}: {len(BUCKETS)} weights >= 0 for {BUCKETS}, got {text!r}")
    return weights


# ---- main --------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=0, help="0: as many as --minutes allows")
    ap.add_argument("--minutes", type=float, default=9.0)
    ap.add_argument("--tokens-per-batch", type=int, default=65536)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--dtype", default="bfloat16", help="dtype of the saved weights")
    ap.add_argument("--smoke", action="store_true", help="tiny model, few steps (CPU check)")
    ap.add_argument("--bucket-weights", default=BUCKET_WEIGHTS, help=f"for {BUCKETS}")
    ap.add_argument(
        "--bucket-weights-end", default=None, help="the weights at the end (linear in time)"
    )
    ap.add_argument("--probe-every", type=int, default=1000, help="steps between recall probes")
    ap.add_argument("--corpus", type=Path, default=CORPUS, help="fortunes, '%%' lines apart")
    ap.add_argument("--init", type=Path, default=None, help="continue from this checkpoint dir")
    ap.add_argument(
        "--arch", default="256,8,8,704", help="d_model,n_layers,n_heads,mlp_hidden (not --init)"
    )
    ap.add_argument("--rope-theta", type=float, default=10000.0)
    ap.add_argument("--mix", default="0.1,0.3", help="shares of fortune-text and drill rows")
    ap.add_argument(
        "--loss", choices=("elbo", "mean"), default="elbo", help="1/t-weighted, or plain mean CE"
    )
    a = ap.parse_args()

    torch.manual_seed(a.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if a.smoke:
        arch = Arch(d_model=64, n_layers=2, n_heads=4, mlp_hidden=128)
    elif a.init is not None:  # a continued run keeps the earlier stage's architecture
        cfg = json.loads((a.init / "config.json").read_text())
        arch = Arch(cfg["d_model"], cfg["n_layers"], cfg["n_heads"], cfg["mlp_hidden_size"],
                    cfg["max_sequence_length"], cfg["rope_theta"])  # fmt: skip
    else:
        d, n_layers, n_heads, mlp = (int(x) for x in a.arch.split(","))
        arch = Arch(d, n_layers, n_heads, mlp, rope_theta=a.rope_theta)
    codec = ByteCodec()
    rows = ((codec.vocab + 63) // 64) * 64
    if not a.corpus.is_file():
        ap.error(f"--corpus: {a.corpus} not found; build it with benchmarks/data/fortunes.py")
    fortunes = a.corpus.read_text().split("\n%\n")
    held = set(random.Random(a.seed).sample(range(len(fortunes)), 200))
    train_f = [f for i, f in enumerate(fortunes) if i not in held]
    test_f = [f for i, f in enumerate(fortunes) if i in held]
    model = TinyLLaDA(arch, rows)
    if a.init is not None:  # a continued run: same arch, weights from the earlier stage
        state = load_file(str(a.init / "model.safetensors"))
        model.load_state_dict({k: v.float() for k, v in state.items()})
        print(f"continuing from {a.init}", flush=True)
    model = model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"device {device}, {n_params / 1e6:.2f}M parameters, arch {asdict(arch)}", flush=True)

    tokens = 2048 if a.smoke else a.tokens_per_batch
    weights = parse_weights(ap, "--bucket-weights", a.bucket_weights)
    end = parse_weights(ap, "--bucket-weights-end", a.bucket_weights_end or a.bucket_weights)
    text_share, drill_share = (float(x) for x in a.mix.split(","))
    if not (0 <= text_share and 0 <= drill_share and text_share + drill_share <= 1):
        ap.error(f"--mix: two shares in [0, 1] summing to at most 1, got {a.mix}")
    data = Rows(
        a.seed, tokens, train_f, a.smoke, weights, (text_share, drill_share), end, a.minutes * 60
    )
    workers = 0 if a.smoke else a.workers
    loader = torch.utils.data.DataLoader(
        data, batch_size=None, num_workers=workers, pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None, persistent_workers=bool(workers),
    )  # fmt: skip
    decay = [p for p in model.parameters() if p.dim() == 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
        lr=a.lr, betas=(0.9, 0.95), fused=device.type == "cuda",
    )  # fmt: skip
    gen = torch.Generator(device=device).manual_seed(a.seed)
    steps = 20 if a.smoke else a.steps
    budget = a.minutes * 60
    curve: list[tuple[int, float]] = []
    probes: list[tuple[int, dict[str, dict]]] = []
    contexts = tasks.CONTEXTS[:2] if a.smoke else tasks.CONTEXTS
    start = time.monotonic()
    ema = None
    step = 0
    t20 = start
    for ids, target, length in loader:
        if step == 20:
            t20 = time.monotonic()
        if steps == 0 and step == 70:  # auto: fill the budget at the steady pace (not start-up's)
            now = time.monotonic()
            pace = (now - t20) / 50
            steps = 70 + int((budget - (now - start)) / pace)
            print(f"{pace * 1000:.0f} ms/step -> {steps} steps", flush=True)
        total = steps or 10**9
        lr = a.lr * lr_factor(step, a.warmup, steps)
        for gr in opt.param_groups:
            gr["lr"] = lr
        ids, target, length = (x.to(device, non_blocking=True) for x in (ids, target, length))
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            loss = diffusion_loss(
                model, ids, target, length, codec.special[tasks.MASK], gen, a.loss == "elbo"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 25 == 0 or step == total:
            v = loss.item()
            ema = v if ema is None else 0.9 * ema + 0.1 * v
            curve.append((step, round(ema, 4)))
            if step % 200 == 0 or step == total or a.smoke:
                el = time.monotonic() - start
                print(f"step {step}/{total} loss {ema:.4f} lr {lr:.2e} {el:.0f}s", flush=True)
        last = step >= total or time.monotonic() - start > budget * 1.05
        if step % a.probe_every == 0 or last:
            probes.append((step, recall_probe(model, codec, device, contexts)))
            print(f"step {step} recall probe {probes[-1][1]}", flush=True)
            export(model, codec, a.out, getattr(torch, a.dtype))  # a stopped run leaves this
        if last:
            break
    elapsed = time.monotonic() - start
    model.eval()
    losses = heldout_loss(model, codec, test_f, device)
    print(f"held-out masked-token loss: {losses}", flush=True)
    export(model, codec, a.out, getattr(torch, a.dtype))
    log = {
        "seed": a.seed,
        "init": str(a.init) if a.init else None,
        "steps": step,
        "planned_steps": steps,
        "tokens_per_batch": tokens,
        "bucket_weights": dict(zip(map(str, BUCKETS), weights, strict=True)),
        "bucket_weights_end": dict(zip(map(str, BUCKETS), end, strict=True)),
        "tokens_seen": step * tokens,
        "lr": a.lr,
        "loss": a.loss,
        "mix": {"text": text_share, "drill": drill_share},
        "minutes": round(elapsed / 60, 2),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "parameters": n_params,
        "arch": asdict(arch),
        "loss_curve": curve,
        "recall_probe": probes,
        "heldout_masked_loss": losses,
        "corpus": {"file": a.corpus.name, "fortunes": len(fortunes), "held_out": len(test_f)},
    }
    (a.out / "training.json").write_text(json.dumps(log, indent=1) + "\n")
    print(f"saved to {a.out} after {step} steps, {elapsed / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
