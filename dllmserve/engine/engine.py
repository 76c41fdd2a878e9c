"""The engine: continuous batching of diffusion requests at step granularity.

Each `step()` advances every running request by one denoising step with one packed forward and
one batched sampling call, then admits waiting requests as cache pages and the per-iteration
token budget allow. The service's worker drives it through `add_request` / `step` / `abort`;
`dllmserve.LLM` wraps it for offline use.
"""

from __future__ import annotations

import gc
import random
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch

from dllmserve.engine.batch import (
    IterationBatch,
    build_iteration,
    chain_iteration,
    refresh_iteration,
)
from dllmserve.engine.cuda_graphs import ReuseGraphs
from dllmserve.engine.dense_graphs import DenseGraphs
from dllmserve.engine.inflight import InFlight
from dllmserve.engine.outputs import RequestOutput, StepUpdate
from dllmserve.engine.page_pool import PagePool
from dllmserve.engine.request import Request
from dllmserve.engine.sampler import sample
from dllmserve.errors import CapacityError, ValidationError
from dllmserve.models.loader import load_model
from dllmserve.models.transformer import DiffusionTransformer
from dllmserve.sampling_params import SamplingParams
from dllmserve.sparse.state import Phase, SparseConfig
from dllmserve.tokenizer import load_tokenizer

CPU_CACHE_BYTES = 1 << 30


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """bf16 on GPU and fp32 on CPU unless asked otherwise."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        names = {
            "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16,
            "float16": torch.float16,
            "fp16": torch.float16,
            "float32": torch.float32,
            "fp32": torch.float32,
        }
        if dtype not in names:
            raise ValidationError("dtype", f"must be one of {sorted(names)}, got {dtype!r}")
        return names[dtype]
    return dtype


class Engine:
    """Step-level diffusion engine. ``tokenizer=None`` serves token ids only (benchmarks)."""

    def __init__(
        self,
        model: DiffusionTransformer,
        tokenizer,
        *,
        model_name: str = "model",
        max_num_seqs: int = 256,
        max_num_batched_tokens: int | None = None,
        page_size: int = 16,
        num_cache_pages: int | None = None,
        gpu_memory_utilization: float = 0.9,
        seed: int = 0,
        enforce_eager: bool = False,
    ) -> None:
        self.model = model
        self.cfg = model.cfg
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.device = model.device
        self.dtype = model.dtype
        self.max_num_seqs = max_num_seqs
        if max_num_batched_tokens is None:
            max_num_batched_tokens = 32768 if self.device.type == "cuda" else 8192
        self.max_num_batched_tokens = max_num_batched_tokens
        self.mask_token_id = self.cfg.mask_token_id
        self.eos_token_id = self.cfg.eos_token_id
        eot = "<|eot_id|>" if self.cfg.arch == "llada" else "<|im_end|>"
        self.eot_token_id = _special_id(tokenizer, eot) if tokenizer is not None else None
        # the tokens that end an answer (EOS, and EOT where the tokenizer has one)
        self.stop_ids = {self.eos_token_id} | (
            {self.eot_token_id} if self.eot_token_id is not None else set()
        )
        cfg = self.cfg
        self.page_bytes = PagePool.page_bytes(page_size, cfg.n_kv_heads, cfg.head_dim, self.dtype)
        if num_cache_pages is None:
            num_cache_pages = self._auto_pages(gpu_memory_utilization)
        self.pool = PagePool(
            num_cache_pages, page_size, cfg.n_kv_heads, cfg.head_dim, self.dtype, self.device
        )
        # CUDA graphs for all-REUSE iterations and for batch-1 FULL / SELECT ones, in one pool
        use_graphs = self.device.type == "cuda" and not enforce_eager
        self.graphs = ReuseGraphs(model, max_num_seqs * 2) if use_graphs else None
        self.dense_graphs = DenseGraphs(model, self.graphs.mempool) if use_graphs else None
        self._rng = random.Random(seed)
        self._cached: tuple[tuple, IterationBatch] | None = None
        self._inflight: InFlight | None = None
        self.waiting: deque[Request] = deque()
        self.running: dict[str, Request] = {}
        self._reserved_tokens = 0

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        **kwargs,
    ) -> Engine:
        dev = torch.device(device) if device is not None else default_device()
        dt = resolve_dtype(dtype, dev)
        net = load_model(model, dt, dev)
        tok = load_tokenizer(model)
        return cls(net, tok, model_name=Path(model).name, **kwargs)

    def _auto_pages(self, utilization: float) -> int:
        """Pages that fit the cache budget: the free GPU memory share left after the weights
        and a worst-case iteration's activations, or a fixed 1 GiB on the CPU."""
        if self.device.type != "cuda":
            return max(1, CPU_CACHE_BYTES // self.page_bytes)
        # memory an earlier engine of this process left in PyTorch's cache counts as free (the
        # seed guide builds one LLM per ratio in a loop, dropping the last with `del llm`)
        gc.collect()
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(self.device)
        cfg = self.cfg
        elem = torch.empty((), dtype=self.dtype).element_size()
        act = self.max_num_batched_tokens * (8 * cfg.d_model + 4 * cfg.mlp_hidden) * elem
        budget = total * utilization - (total - free) - act
        pages = int(budget // self.page_bytes)
        if pages < 1:
            raise CapacityError(
                f"no GPU memory left for the cache: {free / 2**30:.1f} GiB free of "
                f"{total / 2**30:.1f}; raise gpu_memory_utilization or lower max_num_batched_tokens"
            )
        return pages

    # ---- requests --------------------------------------------------------------------------
    def tokenize(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValidationError("prompt", "must be token ids: this engine has no tokenizer")
            return list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        return list(prompt)

    def make_request(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams,
        sparse: SparseConfig | None = None,
    ) -> Request:
        """Validate everything that depends on the model and build the request (not queued)."""
        if not isinstance(params, SamplingParams):
            raise ValidationError("sampling_params", f"must be SamplingParams, got {params!r}")
        params.validate()
        if sparse is not None:
            if not isinstance(sparse, SparseConfig):
                raise ValidationError("sparse_config", f"must be SparseConfig, got {sparse!r}")
            sparse.validate()
        if self.has_request(request_id):
            raise ValidationError("request_id", f"{request_id!r} is already in use")
        ids = self.tokenize(prompt)
        cfg = self.cfg
        if not ids:
            raise ValidationError("prompt", "must hold at least one token")
        bad = [t for t in ids if not isinstance(t, int) or not 0 <= t < cfg.vocab_size]
        if bad:
            raise ValidationError(
                "prompt", f"token id {bad[0]!r} is outside [0, {cfg.vocab_size - 1}]"
            )
        if cfg.mask_token_id in ids:
            raise ValidationError("prompt", f"holds the mask token id {cfg.mask_token_id}")
        total = len(ids) + params.gen_length
        if total > cfg.max_len:
            raise ValidationError(
                "sampling_params.gen_length",
                f"prompt ({len(ids)} tokens) + gen_length ({params.gen_length}) = {total} exceeds "
                f"the model's maximum length {cfg.max_len}",
            )
        active = sparse if sparse is not None and sparse.enabled else None
        block = params.block_length
        if block is None:
            block = (
                min(active.default_block_len, params.gen_length) if active else params.gen_length
            )
        n_blocks = -(-params.gen_length // block)
        if params.steps < n_blocks:
            raise ValidationError(
                "sampling_params.steps",
                f"must be in [{n_blocks}, {params.gen_length}] (at least one step per block: "
                f"ceil(gen_length / block_length) = {n_blocks}), got {params.steps}",
            )
        ratios = [1.0] * cfg.n_layers
        if active is not None:
            if active.delay_step >= block:
                raise ValidationError(
                    "sparse_config.delay_step",
                    f"must be in [0, {block - 1}] (below the block length {block}), "
                    f"got {active.delay_step}",
                )
            ratios = active.ratios_for(cfg.n_layers)
        seed = params.seed if params.seed is not None else self._rng.getrandbits(63)
        req = Request(
            request_id=request_id,
            prompt_ids=ids,
            params=params,
            sparse=active,
            seed=seed,
            block_length=block,
            mask_id=cfg.mask_token_id,
            shifted=cfg.shifted_logits,
            layer_ratios=ratios,
        )
        if req.L * req.lanes > self.max_num_batched_tokens:
            raise CapacityError(
                f"request {request_id!r} needs {req.L * req.lanes} tokens per iteration; "
                f"max_num_batched_tokens is {self.max_num_batched_tokens}"
            )
        if self._pages_needed(req) > self.pool.num_pages:
            raise CapacityError(
                f"request {request_id!r} needs {self._pages_needed(req)} cache pages; the pool "
                f"holds {self.pool.num_pages}"
            )
        return req

    def add_request(
        self,
        request_id: str,
        prompt: str | list[int],
        sampling_params: SamplingParams,
        sparse_config: SparseConfig | None = None,
    ) -> None:
        """Queue a request; raises ValidationError / CapacityError before touching the batch."""
        self.waiting.append(self.make_request(request_id, prompt, sampling_params, sparse_config))

    def abort(self, request_id: str) -> bool:
        """Drop a request now; its pages go back to the pool at once."""
        req = self.running.pop(request_id, None)
        if req is not None:
            self._release(req)
            return True
        for r in self.waiting:
            if r.request_id == request_id:
                self.waiting.remove(r)
                return True
        return False

    def has_request(self, request_id: str) -> bool:
        """Whether the request is waiting or running here."""
        return request_id in self.running or any(r.request_id == request_id for r in self.waiting)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running or self._inflight)

    def stats(self) -> dict:
        return {
            "running": len(self.running),
            "waiting": len(self.waiting),
            "free_pages": self.pool.num_free,
            "total_pages": self.pool.num_pages,
            "page_size": self.pool.page_size,
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "reserved_tokens": self._reserved_tokens,
        }

    # ---- memory ----------------------------------------------------------------------------
    def _pages_needed(self, req: Request) -> int:
        if req.sparse is None:
            return 0
        per_lane = sum(self.pool.pages_for(n) for n in req.max_kept_counts())
        return per_lane * req.lanes

    def _admit(self) -> None:
        """FIFO admission while a slot, the token budget and the pages allow."""
        while self.waiting and len(self.running) < self.max_num_seqs:
            req = self.waiting[0]
            tokens = req.L * req.lanes
            if self._reserved_tokens + tokens > self.max_num_batched_tokens:
                return
            if self._pages_needed(req) > self.pool.num_free:
                return
            if req.sparse is not None:
                req.set_pages(
                    [
                        [self.pool.allocate(self.pool.pages_for(n)) for n in req.max_kept_counts()]
                        for _ in range(req.lanes)
                    ]
                )
            self.waiting.popleft()
            self._reserved_tokens += tokens
            req.admit_time = time.monotonic()
            self.running[req.request_id] = req

    def _release(self, req: Request) -> None:
        for lane in req.pages:
            for pages in lane:
                self.pool.free(pages)
        req.set_pages([])
        self._reserved_tokens -= req.L * req.lanes

    # ---- the step --------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[StepUpdate]:
        """Run one iteration and return the step updates that are ready.

        Inside a block, an all-REUSE iteration that ends no request's block does not decide
        anything the next iteration needs from the host: the next one is chained on the device
        (its tokens are scattered in there) and launched before this one's results are read
        back, so the host's bookkeeping overlaps the GPU's work. Its updates then come out of
        the following call.
        """
        self._admit()
        prev = self._inflight
        if prev is not None and not self._chainable(prev):
            self._inflight = None
            return self._collect(prev)
        if not self.running:
            return []
        reqs = list(self.running.values())
        batch = (
            chain_iteration(prev, reqs, self.cfg.shifted_logits, self.device)
            if prev
            else (self._batch_for(reqs))
        )
        cur = self._launch(reqs, batch)
        updates = self._collect(prev) if prev is not None else []
        if self._chainable(cur):
            self._inflight = cur
            return updates
        self._inflight = None
        return updates + self._collect(cur)

    def _launch(self, reqs: list[Request], batch: IterationBatch) -> InFlight:
        """Queue the forward, the LM head, the sampler and the copy of the results to the host."""
        hidden = None
        for graphs in (self.graphs, self.dense_graphs):  # a replay where one fits, else eager
            key = graphs.key(batch) if graphs is not None else None
            if key is not None:
                hidden = graphs.forward(batch, key)
                break
        if hidden is None:
            hidden = self.model.forward(batch.input_ids, batch.positions, batch.attention)
        R, B = batch.logit_rows.shape
        logits = self.model.logits(hidden[batch.logit_rows.view(-1)]).view(R, B, -1)
        if batch.uncond_rows is not None:
            un = self.model.logits(hidden[batch.uncond_rows.view(-1)]).view(R, B, -1)
            logits = un + (batch.cfg_scale[:, None, None] + 1) * (logits - un)
        x0, commit = sample(
            logits, batch.sampling, self.eos_token_id, self.eot_token_id, self.mask_token_id
        )
        return InFlight.start(reqs, batch, x0, commit)

    def _chainable(self, fl: InFlight) -> bool:
        """Whether the iteration after `fl` can be launched before `fl`'s results are read:
        the same requests, all in REUSE, none ending its block at `fl`'s step (the host state is
        the one before that step) and none deciding its block end by threshold."""
        if fl.batch.reuse_window is None or fl.batch.attention.n_dense_tokens:
            return False
        if len(self.running) != len(fl.reqs) or self.waiting and self._could_admit():
            return False
        return all(
            self.running.get(r.request_id) is r
            and r.phase == Phase.REUSE
            and r.params.threshold is None
            and r.step_in_block + 1 < r.block_steps[r.block_idx]
            for r in fl.reqs
        )

    def _could_admit(self) -> bool:
        """A waiting request would be admitted at the next iteration (so do not chain past it)."""
        req = self.waiting[0]
        return (
            len(self.running) < self.max_num_seqs
            and self._reserved_tokens + req.L * req.lanes <= self.max_num_batched_tokens
            and self._pages_needed(req) <= self.pool.num_free
        )

    def _collect(self, fl: InFlight) -> list[StepUpdate]:
        """Apply an iteration's results on the host; requests aborted meanwhile are skipped."""
        host = fl.wait()
        now = time.monotonic()
        return [
            self._advance(r, host[0, i], host[1, i], now)
            for i, r in enumerate(fl.reqs)
            if self.running.get(r.request_id) is r
        ]

    def _batch_for(self, reqs: list[Request]):
        """The iteration's inputs. Consecutive all-REUSE iterations of the same requests in
        the same blocks share every index tensor, so only the tokens and step counters are
        rebuilt and uploaded."""
        signature = tuple((r.request_id, r.block_idx, r.phase) for r in reqs)
        all_reuse = all(r.phase == Phase.REUSE for r in reqs)
        if all_reuse and self._cached is not None and self._cached[0] == signature:
            batch = refresh_iteration(self._cached[1], reqs, self.device)
        else:
            cfg = self.cfg
            batch = build_iteration(
                reqs, self.pool, cfg.n_layers, cfg.head_dim, self.dtype, self.device
            )
        self._cached = (signature, batch) if all_reuse else None
        return batch

    def _advance(self, req: Request, x0: np.ndarray, commit: np.ndarray, now: float) -> StepUpdate:
        bs, be = req.block_span
        block = req.block_idx
        offs = np.flatnonzero(commit[: be - bs])
        tokens = x0[offs]
        req.canvas[bs + offs] = tokens
        positions = (offs + (bs - req.P)).tolist()
        token_ids = tokens.tolist()
        req.global_step += 1
        req.step_in_block += 1
        req.num_forward_passes += req.lanes
        if req.first_step_time is None:
            req.first_step_time = now
        if req.params.threshold is not None:
            block_done = req.block_masked() == 0
        else:
            block_done = req.step_in_block >= req.block_steps[req.block_idx]
        finished = False
        if block_done:
            if req.params.stop_at_eos and self._answer_ended(req, be):
                rest = np.flatnonzero(req.canvas[be:] == req.mask_id) + be
                req.canvas[rest] = self.eos_token_id
                positions += (rest - req.P).tolist()
                token_ids += [self.eos_token_id] * len(rest)
                finished, req.finish_reason = True, "stop"
            elif req.block_idx + 1 == len(req.blocks):
                gen = set(req.canvas[req.P :].tolist())
                finished, req.finish_reason = True, "stop" if gen & self.stop_ids else "length"
            else:
                req.next_block()
        update = StepUpdate(
            request_id=req.request_id,
            step=req.global_step,
            total_steps=req.total_steps,
            block_index=block,
            positions=positions,
            token_ids=token_ids,
            masked_left=req.masked_left,
            finished=finished,
        )
        if finished:
            self.running.pop(req.request_id)
            update.output = self._output(req, now)
            self._release(req)
        return update

    def _answer_ended(self, req: Request, end: int) -> bool:
        """True when the committed canvas holds a stop token and only stop tokens after it."""
        gen = req.canvas[req.P : end].tolist()
        first = next((i for i, t in enumerate(gen) if t in self.stop_ids), None)
        return first is not None and all(t in self.stop_ids for t in gen[first:])

    def _output(self, req: Request, now: float) -> RequestOutput:
        gen = req.canvas[req.P :].tolist()
        end = next((i for i, t in enumerate(gen) if t in self.stop_ids), len(gen))
        text = (
            self.tokenizer.decode(gen[:end], skip_special_tokens=True)
            if self.tokenizer is not None
            else ""
        )
        kv_pages = self._pages_needed(req)
        return RequestOutput(
            request_id=req.request_id,
            prompt_token_ids=req.prompt_ids,
            token_ids=gen,
            text=text,
            finish_reason=req.finish_reason or "length",
            num_steps=req.global_step,
            num_forward_passes=req.num_forward_passes,
            metrics={
                "queue_time": (req.admit_time or now) - req.arrival_time,
                "time_to_first_step": (req.first_step_time or now) - req.arrival_time,
                "latency": now - req.arrival_time,
                "kv_cache_pages": kv_pages,
                "kv_cache_bytes": kv_pages * self.page_bytes,
            },
        )


def _special_id(tokenizer, token: str) -> int | None:
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or tid == getattr(tokenizer, "unk_token_id", None):
        return None
    return int(tid)
