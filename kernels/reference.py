"""Plain-PyTorch versions of the attention and selection kernels.

They are the engine's CPU path and the oracle the Triton kernels are tested against, so they
favour clarity over speed: one loop iteration per request, fp32 math, no host-sync concerns.
Layouts and semantics are those of ``dllmserve.kernels`` (see its module docstring); each
Triton module names the function here that it must reproduce.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .noise import uniform64
from .selection_args import SelectionArgs


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Bidirectional GQA attention of q [M,H,D] over k,v [N,Hkv,D] in fp32, result [M,H,D] fp32."""
    group = q.shape[1] // k.shape[1]
    k = k.float().repeat_interleave(group, dim=1)
    v = v.float().repeat_interleave(group, dim=1)
    s = torch.einsum("mhd,nhd->hmn", q.float(), k) * scale
    return torch.einsum("hmn,nhd->mhd", torch.softmax(s, dim=-1), v)


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    scale: float,
) -> torch.Tensor:
    """Bidirectional attention inside each packed segment [cu[s], cu[s+1]) of q [T,H,D]."""
    out = torch.empty_like(q)
    cu = cu_seqlens.tolist()
    for a, b in zip(cu[:-1], cu[1:], strict=True):
        if b > a:
            out[a:b] = _attend(q[a:b], k[a:b], v[a:b], scale).to(q.dtype)
    return out


def gather_kept(pool: torch.Tensor, page_table: torch.Tensor, r: int, n: int) -> torch.Tensor:
    """Entries 0..n-1 of request r from a paged pool [pages, page_size, Hkv, D] as [n, Hkv, D]."""
    page_size = pool.shape[1]
    j = torch.arange(n, device=pool.device)
    pages = page_table[r, j // page_size].long()
    return pool[pages, j % page_size]


def reuse_attention(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    cu_q: torch.Tensor,
    max_q: int,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    page_table: torch.Tensor,
    kept_len: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Each request's queries attend to its kept (paged) K/V followed by its own fresh K/V."""
    out = torch.empty_like(q)
    cu = cu_q.tolist()
    kept = kept_len.tolist()
    for r, (a, b) in enumerate(zip(cu[:-1], cu[1:], strict=True)):
        if b == a:
            continue
        k = torch.cat([gather_kept(k_pool, page_table, r, kept[r]), k_new[a:b]])
        v = torch.cat([gather_kept(v_pool, page_table, r, kept[r]), v_new[a:b]])
        out[a:b] = _attend(q[a:b], k, v, scale).to(q.dtype)
    return out


def candidate_positions(seq_len: int, win_start: int, win_len: int, device=None) -> torch.Tensor:
    """Sequence positions of the candidates (everything outside the window), in order."""
    c = torch.arange(seq_len - win_len, device=device)
    return torch.where(c < win_start, c, c + win_len)


def selection_scores(
    q_win: torch.Tensor, k_cand: torch.Tensor, head_select: bool, scale: float
) -> torch.Tensor:
    """Scores [Hkv, N_c] of candidate keys k_cand [N_c,Hkv,D] against the window's mean query."""
    hkv = k_cand.shape[1]
    group = q_win.shape[1] // hkv
    qbar = q_win.float().mean(dim=0)  # [H, D]
    k = k_cand.float().repeat_interleave(group, dim=1)  # [N_c, H, D]
    s = torch.einsum("hd,nhd->hn", qbar, k) * scale  # [H, N_c]
    if head_select:
        return s.view(hkv, group, -1).amax(dim=1)
    return s.sum(dim=0, keepdim=True).expand(hkv, -1)


def max_pool(scores: torch.Tensor, kernel: int) -> torch.Tensor:
    """Stride-1 max-pool along the last dim, same length, windows clipped at the ends."""
    w = kernel // 2
    return F.max_pool1d(scores[:, None], kernel, stride=1, padding=w)[:, 0]


def top_k_sorted(pooled: torch.Tensor, n: int) -> torch.Tensor:
    """Per row, the indices of the n largest values (ties: lower index first), ascending."""
    order = torch.sort(pooled, dim=-1, descending=True, stable=True).indices
    return order[:, :n].sort(dim=-1).values


def select_and_store(a: SelectionArgs) -> torch.Tensor:
    """Pick each KV head's best candidates, store their K/V in the pages, return the positions
    [R, Hkv, max_keep] (ascending, int64, padded with -1)."""
    n_req = a.cu_seq.numel() - 1
    hkv = a.k_seq.shape[1]
    page_size = a.k_pool.shape[1]
    dev = a.k_seq.device
    kept = torch.full((n_req, hkv, a.max_keep), -1, dtype=torch.int64, device=dev)
    cw, cs = a.cu_win.tolist(), a.cu_seq.tolist()
    ws, wl, nk = a.win_start.tolist(), a.win_len.tolist(), a.n_keep.tolist()
    hs, pk = a.head_select.tolist(), a.pool_kernel.tolist()
    for r in range(n_req):
        if nk[r] == 0:
            continue
        pos = candidate_positions(cs[r + 1] - cs[r], ws[r], wl[r], dev)
        k_r, v_r = a.k_seq[cs[r] : cs[r + 1]], a.v_seq[cs[r] : cs[r + 1]]
        scores = selection_scores(a.q_win[cw[r] : cw[r + 1]], k_r[pos], hs[r], a.scale)
        idx = top_k_sorted(max_pool(scores, pk[r]), nk[r])  # [Hkv, n]
        p = pos[idx]
        kept[r, :, : nk[r]] = p
        j = torch.arange(nk[r], device=dev)
        pages = a.page_table[r, j // page_size].long()[None].expand(hkv, -1)
        slots = (j % page_size)[None].expand(hkv, -1)
        heads = torch.arange(hkv, device=dev)[:, None].expand(-1, nk[r])
        a.k_pool[pages, slots, heads] = k_r[p, heads]
        a.v_pool[pages, slots, heads] = v_r[p, heads]
    return kept


def sample_tokens(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    seed: torch.Tensor,
    step: torch.Tensor,
    positions: torch.Tensor,
    logits_eos_inf: torch.Tensor,
    conf_eos_eot_inf: torch.Tensor,
    mask_id: int,
    eos_id: int,
    eot_id: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token x0 [R,B] int64 and low-confidence score [R,B] float64 of logits [R,B,V], exactly
    as dllmserve/engine/sampler.py computes them when no top-k/top-p filter is set.

    temperature [R] float64 (0: argmax, else float64 Gumbel-max with noise.uniform64 drawn at
    (seed [R], step [R], positions [R,B], vocab id)); logits_eos_inf / conf_eos_eot_inf [R]
    bool as in the official sampler.
    """
    n_req, block, n_vocab = logits.shape
    logits = logits.clone()
    logits[..., mask_id] = -torch.inf
    rows = logits_eos_inf[:, None].expand(n_req, block)
    logits[..., eos_id] = torch.where(rows, -torch.inf, logits[..., eos_id])
    t64 = temperature.to(torch.float64)[:, None, None]
    vocab = torch.arange(n_vocab, device=logits.device)
    u = uniform64(seed[:, None, None], step[:, None, None], positions[..., None], vocab)
    noisy = logits.to(torch.float64).exp() / (-torch.log(u)) ** t64
    x0 = torch.where(t64 > 0, noisy, logits.to(torch.float64)).argmax(dim=-1)
    if eot_id is not None:
        off = conf_eos_eot_inf[:, None].expand(n_req, block)
        logits[..., eot_id] = torch.where(off, -torch.inf, logits[..., eot_id])
        off0 = (conf_eos_eot_inf & (temperature == 0))[:, None].expand(n_req, block)
        logits[..., eos_id] = torch.where(off0, -torch.inf, logits[..., eos_id])
    p = torch.softmax(logits.float(), dim=-1).to(logits.dtype)
    return x0, p.gather(-1, x0[..., None])[..., 0].to(torch.float64)


def block_probabilities(
    logits: torch.Tensor, temperature: torch.Tensor, drawn: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """x0 [R,B] int64 and its probability [R,B] float64 in softmax(logits / T) over the whole
    vocabulary in fp32, for logits [R,B,V], temperature [R] (0: greedy) and drawn [R,B] or
    None: the block-diffusion sampler's (engine/block_sampler.py). x0 is the argmax of the
    probabilities (the mask token included), or `drawn` where T > 0. T is rounded to the
    logits' dtype first; with nothing drawn the logits are used as they are."""
    p = _block_softmax(logits, temperature, drawn is not None)
    x0 = p.argmax(dim=-1)
    if drawn is not None:
        x0 = torch.where(temperature.to(logits.dtype)[:, None] > 0, drawn, x0)
    return x0, p.gather(-1, x0[..., None])[..., 0].to(torch.float64)


def token_probabilities(
    logits: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor, temperature: torch.Tensor
) -> torch.Tensor:
    """[k,B] float64: the probability of tokens[i, b] at logits[rows[i], b] in the softmax
    `block_probabilities` forms for that row at temperature[i] (the same bits for the same
    token)."""
    p = _block_softmax(logits[rows], temperature, True)
    return p.gather(-1, tokens[..., None])[..., 0].to(torch.float64)


def _block_softmax(logits: torch.Tensor, temperature: torch.Tensor, scale: bool) -> torch.Tensor:
    """softmax in fp32 of the logits, divided by T (rounded to their dtype) where `scale` and
    T > 0, as engine/temperature.py's over_temperature."""
    temp = temperature.to(logits.dtype)[:, None, None]
    if scale:
        logits = torch.where(temp > 0, logits / torch.where(temp > 0, temp, 1), logits)
    return torch.softmax(logits.float(), -1)


E4M3_MAX = 448.0  # the largest finite float8_e4m3fn value
FP8_MIN_SCALE = 1e-12  # an all-zero row keeps a finite scale


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (per-token) e4m3 quantization: scale = amax(|row|) / 448, q = x / scale rounded
    to nearest e4m3 (ties to even); x ≈ q * scale. Returns (q [M, K], scale [M, 1] fp32)."""
    xf = x.float()
    amax = xf.abs().amax(dim=-1, keepdim=True)
    # a tensor divisor: PyTorch's CUDA division by a Python scalar multiplies by its reciprocal,
    # one rounding off the IEEE quotient the kernel (and the CPU) computes
    scale = (amax / amax.new_tensor(E4M3_MAX)).clamp(min=FP8_MIN_SCALE)
    q = (xf / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return q, scale


def _fp32_operand(a: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """a in fp32: as is, or an activation quantized per row then dequantized (FP8 path)."""
    if scale is None:
        return a.float()
    q, s = quantize_rows(a)
    return q.float() * s


def fused_moe(
    x: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    *,
    w_gate_up_scale: torch.Tensor | None = None,
    w_down_scale: torch.Tensor | None = None,
    x_fp8: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The mixture-of-experts MLP, one expert at a time, with the kernel's roundings: fp32
    products, silu(gate) * up rounded to x's dtype, each (token, j) contribution times its
    routing weight rounded to x's dtype, the k contributions summed in fp32. FP8 (scales
    given): both operands quantized as on the GPU (x's rows as given in `x_fp8`), then
    dequantized to fp32."""
    t, d = x.shape
    n_exp, i = w_gate_up.shape[0], w_gate_up.shape[1] // 2
    w_gu, w_d = w_gate_up.float(), w_down.float()
    if w_gate_up_scale is not None:
        w_gu, w_d = w_gu * w_gate_up_scale[..., None], w_d * w_down_scale[..., None]
    xf = _fp32_operand(x, w_gate_up_scale) if x_fp8 is None else x_fp8[0].float() * x_fp8[1]
    contrib = torch.zeros(t, topk_ids.shape[1], d, device=x.device)
    for e in range(n_exp):
        tok, j = (topk_ids == e).nonzero(as_tuple=True)
        if tok.numel() == 0:
            continue
        gu = xf[tok] @ w_gu[e].T
        h = (F.silu(gu[:, :i]) * gu[:, i:]).to(x.dtype)
        y = _fp32_operand(h, w_down_scale) @ w_d[e].T
        contrib[tok, j] = (topk_weights[tok, j, None] * y).to(x.dtype).float()
    return contrib.sum(dim=1).to(x.dtype)


def segment_argmax(
    scores: torch.Tensor,
    order: torch.Tensor,
    bounds: torch.Tensor,
    table: torch.Tensor,
    floor: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row r, position p and segment t of layout d = table[r]: the max of
    max(scores[r, p, id], floor) over the ids order[d, lo:hi] ([lo, hi) = bounds[d, t]) and
    the lowest id reaching it; an empty segment gives -inf and V. ([k, n, n_seg] fp32 and
    int32; segments must not overlap.)"""
    k, n, vocab = scores.shape
    n_layouts, n_seg, _ = bounds.shape
    dev = scores.device
    segment_of = torch.full((n_layouts, vocab), n_seg, dtype=torch.long, device=dev)
    for d in range(n_layouts):
        lo, hi = bounds[d, :, 0].long(), bounds[d, :, 1].long()
        lengths = (hi - lo).clamp(min=0)
        seg = torch.repeat_interleave(torch.arange(n_seg, device=dev), lengths)
        first = torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths)
        places = (
            torch.repeat_interleave(lo, lengths) + torch.arange(seg.numel(), device=dev) - first
        )
        segment_of[d, places] = seg
    ids = order[table.long()].long()[:, None, :].expand(k, n, vocab)
    s = scores.float().gather(2, ids).clamp(min=floor)
    seg = segment_of[table.long()][:, None, :].expand(k, n, vocab)
    best = torch.full((k, n, n_seg + 1), -torch.inf, device=dev).scatter_reduce(2, seg, s, "amax")
    hit = torch.where(s == best.gather(2, seg), ids, vocab)
    arg = torch.full((k, n, n_seg + 1), vocab, dtype=torch.long, device=dev)
    arg = arg.scatter_reduce(2, seg, hit, "amin")
    return best[..., :n_seg], arg[..., :n_seg].to(torch.int32)


ROUTERS = ("softmax", "sigmoid_group")
ROUTE_MAX_EXPERTS = 1024  # the kernel holds a token's logits in registers


def check_route_args(
    logits: torch.Tensor,
    bias: torch.Tensor | None,
    router: str,
    top_k: int,
    n_group: int,
    topk_group: int,
    round_to: torch.dtype | None,
) -> None:
    """ValueError naming the argument, shared by both paths so they refuse the same inputs."""
    if logits.dim() != 2 or logits.dtype != torch.float32:
        got = f"{logits.dtype} {tuple(logits.shape)}"
        raise ValueError(f"route_experts: logits must be [T, E] fp32, got {got}")
    e = logits.shape[1]
    if not 1 <= e <= ROUTE_MAX_EXPERTS:
        raise ValueError(f"route_experts: logits must have 1..{ROUTE_MAX_EXPERTS} experts, got {e}")
    if bias is not None and (tuple(bias.shape) != (e,) or not bias.is_floating_point()):
        got = f"{bias.dtype} {tuple(bias.shape)}"
        raise ValueError(f"route_experts: bias must be a float [E={e}], got {got}")
    if bias is not None and bias.device != logits.device:
        raise ValueError(f"route_experts: bias must be on logits' device ({logits.device})")
    if router not in ROUTERS:
        raise ValueError(f"route_experts: router must be one of {ROUTERS}, got {router!r}")
    if not 1 <= top_k <= e:
        raise ValueError(f"route_experts: top_k must be in [1, E={e}], got {top_k}")
    if router == "sigmoid_group":
        # a group scores its two best experts, and the kept groups must hold top_k experts
        ok = n_group >= 1 and e % n_group == 0 and e // n_group >= 2
        if not ok:
            raise ValueError(f"route_experts: n_group must divide E={e} in groups of >= 2")
        if not 1 <= topk_group <= n_group or top_k > topk_group * (e // n_group):
            raise ValueError(f"route_experts: topk_group={topk_group} can't hold top_k={top_k}")
    if round_to not in (None, torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"route_experts: round_to must be None or fp32/fp16/bf16, got {round_to}")


def top_k_stable(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest along the last dim, descending, the lowest index first among equals
    (torch.topk leaves the order of ties unspecified; the kernel's argmax rounds fix it)."""
    values, ids = torch.sort(x, dim=-1, descending=True, stable=True)
    return values[..., :k], ids[..., :k]


def route_experts(
    logits: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    router: str,
    top_k: int,
    n_group: int = 1,
    topk_group: int = 1,
    routed_scaling: float = 1.0,
    round_to: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """topk_ids [T, k] int32 and topk_weights [T, k] fp32 of fp32 router logits [T, E]; the
    routers of `dllmserve.models.moe` (its docstring), with stable ties. The weights are
    rounded to `round_to` and back to fp32 when it is given (LLaDA-MoE's official rounding)."""
    check_route_args(logits, bias, router, top_k, n_group, topk_group, round_to)
    b = None if bias is None else bias.float()
    if router == "softmax":
        probs = torch.softmax(logits, dim=-1)
        weights, ids = top_k_stable(probs if b is None else probs + b, top_k)
    else:
        scores = torch.sigmoid(logits)
        biased = scores if b is None else scores + b
        t, e = biased.shape
        group_scores = top_k_stable(biased.view(t, n_group, e // n_group), 2)[0].sum(dim=-1)
        kept = top_k_stable(group_scores, topk_group)[1]
        keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, kept, True)
        masked = biased.masked_fill(~keep.repeat_interleave(e // n_group, dim=1), -torch.inf)
        ids = top_k_stable(masked, top_k)[1]
        weights = scores.gather(1, ids)
        if top_k > 1:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        weights = weights * routed_scaling
    if round_to is not None:
        weights = weights.to(round_to).float()
    return ids.to(torch.int32), weights
