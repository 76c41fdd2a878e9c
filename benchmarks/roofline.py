"""The card's ceilings, measured in the same run, and the roofline of the algorithm on them.

`measure_ceilings` times a large device-to-device copy (bytes read plus written) and 8192^3
matrix products in bf16 and FP8 on random data (zeros would flatter them). `forward_ms` is the
least time one forward can take on those ceilings: every GEMM costs max(its bytes / copy
bandwidth, its FLOPs / matmul rate), summed over the layers' four GEMMs (an MoE layer's FFN:
`moe_ms`), the LM head (over the rows being decided only) and attention (FLOPs only: its K/V
bytes are small next to the weights). docs/design.md §13 derives the per-block schedule
`block_ms` applies it to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Ceilings:
    copy_tbs: float  # TB/s, bytes read + written
    bf16_tflops: float
    fp8_tflops: float


def timed(fn: Callable[[], object], reps: int = 50) -> float:
    """Median milliseconds of `fn` over CUDA-graph replays (no launch gaps, no Python)."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def eager_ms(fn: Callable[[], object], reps: int) -> float:
    """Median milliseconds of `fn` launched eagerly (for work long enough to hide the launch)."""
    fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def measure_ceilings(device: torch.device) -> Ceilings:
    n = 1 << 30  # 2 GiB of bf16: far past the L2
    src = torch.randn(n, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    # eager, not replayed: a copy captured in a CUDA graph becomes a memcpy node that the
    # driver runs on a copy engine, at about two thirds of what the SMs' copy kernel reaches
    copy_ms = eager_ms(lambda: dst.copy_(src), reps=20)
    s = 8192
    a = torch.randn(s, s, device=device, dtype=torch.bfloat16)
    b = torch.randn(s, s, device=device, dtype=torch.bfloat16)
    mm_ms = timed(lambda: a @ b, reps=20)
    a8 = a.to(torch.float8_e4m3fn)
    b8 = b.to(torch.float8_e4m3fn).t().contiguous().t()  # column-major, as _scaled_mm wants
    one = torch.ones((), device=device)
    f8_ms = timed(
        lambda: torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=torch.bfloat16), 20
    )
    flop = 2 * s**3
    return Ceilings(
        copy_tbs=2 * n * 2 / copy_ms / 1e9,
        bf16_tflops=flop / mm_ms / 1e9,
        fp8_tflops=flop / f8_ms / 1e9,
    )


def linear_shapes(cfg) -> dict[str, tuple[int, int]]:
    """[N, K] of each linear layer of one transformer block, and the LM head."""
    d, hd = cfg.d_model, cfg.head_dim
    return {
        "qkv": ((cfg.n_heads + 2 * cfg.n_kv_heads) * hd, d),
        "o": (d, cfg.n_heads * hd),
        "gate_up": (2 * cfg.mlp_hidden, d),
        "down": (d, cfg.mlp_hidden),
        "lm_head": (cfg.vocab_size, d),
    }


Precision = tuple[int, float]
"""Bytes per weight and the tensor cores' rate (TFLOP/s) of one kind of GEMM."""


def precisions(c: Ceilings, quantization: str | None) -> tuple[Precision, Precision]:
    """(dense linears, routed experts) of a model stored in `quantization`
    (EngineConfig.quantization: "fp8" both in FP8, "fp8-experts" the experts only)."""
    bf16, fp8 = (2, c.bf16_tflops), (1, c.fp8_tflops)
    return (fp8 if quantization == "fp8" else bf16), (bf16 if quantization is None else fp8)


def forward_ms(
    cfg, c: Ceilings, tokens: int, logit_rows: int, attn_pairs: int,
    quantization: str | None = None,
) -> float:  # fmt: skip
    """The least time of one forward of `tokens` packed tokens whose attention spans
    `attn_pairs` (query, key) pairs in all, deciding `logit_rows` positions."""
    shapes = linear_shapes(cfg)
    head = shapes.pop("lm_head")
    (w_bytes, rate), experts = precisions(c, quantization)

    def gemm(m: int, n: int, k: int, elem: int, tflops: float) -> float:
        return max(n * k * elem / (c.copy_tbs * 1e9), 2 * m * n * k / (tflops * 1e9))

    ffn = {n: shapes.pop(n) for n in ("gate_up", "down")}
    layers = sum(gemm(tokens, n, k, w_bytes, rate) for n, k in shapes.values())
    dense = sum(gemm(tokens, n, k, w_bytes, rate) for n, k in ffn.values())
    moe = cfg.moe
    n_moe = sum(moe.moe_layers) if moe is not None else 0
    attention = 4 * attn_pairs * cfg.n_heads * cfg.head_dim / (c.bf16_tflops * 1e9)
    return (
        cfg.n_layers * (layers + attention)
        + (cfg.n_layers - n_moe) * dense
        + n_moe * (moe_ms(cfg, c, tokens, experts, (w_bytes, rate)) if n_moe else 0.0)
        + gemm(logit_rows, *head, 2, c.bf16_tflops)
    )


def moe_ms(cfg, c: Ceilings, tokens: int, experts: Precision, shared: Precision) -> float:
    """The least time of one MoE FFN over `tokens` tokens: the router, the shared expert and
    the routed experts, whose bytes are those of the experts the tokens touch (expected under
    uniform routing: E (1 - (1 - k/E)^tokens)) and whose FLOPs are k experts a token."""
    moe, d = cfg.moe, cfg.d_model
    e, k, i, s = moe.num_experts, moe.top_k, moe.expert_hidden, moe.shared_hidden
    touched = e * (1 - (1 - k / e) ** tokens)
    per_expert = 3 * i * d  # gate, up and down
    routed = max(
        touched * per_expert * experts[0] / (c.copy_tbs * 1e9),
        2 * tokens * k * per_expert / (experts[1] * 1e9),
    )
    shared_ms = max(
        3 * s * d * shared[0] / (c.copy_tbs * 1e9), 2 * tokens * 3 * s * d / (shared[1] * 1e9)
    )
    router = max(e * d * 2 / (c.copy_tbs * 1e9), 2 * tokens * e * d / (c.bf16_tflops * 1e9))
    return router + shared_ms + routed


def ceiling_tokens_per_s(
    cfg, c: Ceilings, *, batch: int, prompt: int, gen: int, steps: int, block: int,
    delay: int, retention: float, quantization: str | None = None,
) -> float:  # fmt: skip
    """Tokens/s of the sparse algorithm at its roofline: per block, `delay` FULL and one SELECT
    forward over whole sequences, then REUSE forwards over the block against the kept K/V."""
    n_blocks = -(-gen // block)
    s = steps // n_blocks
    seq = prompt + gen
    full = forward_ms(cfg, c, batch * seq, batch * block, batch * seq * seq, quantization)
    kept = int(retention * (seq - block))
    reuse = forward_ms(
        cfg, c, batch * block, batch * block, batch * block * (kept + block), quantization
    )
    per_block = (delay + 1) * full + (s - delay - 1) * reuse
    return 1000 * batch * gen / (n_blocks * per_block)


def block_ceiling_tokens_per_s(
    cfg, c: Ceilings, *, batch: int, prompt: int, gen: int, steps: int, block: int,
    quantization: str | None = None,
) -> float:  # fmt: skip
    """Tokens/s of a block-diffusion model (LLaDA2) at its roofline, as the engine runs it: per
    block, its steps forward the b·B block tokens against the cached K/V of everything before
    (read once per step: its bytes count), and the block's first step also stores the block
    before it (2·b·B tokens); the prompt's full blocks are forwarded once at the first step."""
    first = prompt // block
    n_blocks = -(-(prompt + gen) // block) - first
    s = min(max(1, steps // n_blocks), gen)
    # K and V of every layer, in the model dtype (bf16) whatever the weights are stored in
    kv_entry = cfg.n_layers * 2 * cfg.n_kv_heads * cfg.head_dim * 2
    total = 0.0
    for j in range(n_blocks):
        start = (first + j) * block
        stored = first * block if j == 0 else block  # what the block's first step stores
        # each stored block attends to itself and everything before it
        stored_pairs = block * block * first * (first + 1) // 2 if j == 0 else block * start
        pairs = batch * block * (start + block)
        kv_ms = batch * start * kv_entry / (c.copy_tbs * 1e9)
        step = forward_ms(cfg, c, batch * block, batch * block, pairs, quantization) + kv_ms
        first_step = forward_ms(
            cfg, c, batch * (block + stored), batch * block,
            pairs + batch * stored_pairs, quantization,
        ) + kv_ms  # fmt: skip
        total += first_step + (s - 1) * step
    return 1000 * batch * gen / total
