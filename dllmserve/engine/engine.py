"""The engine: continuous batching of diffusion requests at step granularity
(docs/design.md §2, §7).

Each `step()` advances every running request by one denoising step with one packed forward and
one batched sampling call, then the requests take their results. It composes the parts:
`inputs.resolve_request` (each request checked once), the `Batcher` (who runs), the
`ModelRunner` (the device side) and the requests' own transitions. The service's worker drives
it through the `protocol.StepEngine` surface; `dllmserve.LLM` wraps it for offline use.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import torch

from dllmserve.engine.batcher import Batcher
from dllmserve.engine.block_request import BlockRequest
from dllmserve.engine.config import EngineConfig
from dllmserve.engine.constrained import request_constraint
from dllmserve.engine.detokenizer import IncrementalDetokenizer, fast_decoder
from dllmserve.engine.inflight import InFlight
from dllmserve.engine.inputs import ModelLimits, resolve_request, vocabulary
from dllmserve.engine.kv_cache import KVCache, auto_num_pages, page_bytes
from dllmserve.engine.loading import load_checkpoint, load_random_shape
from dllmserve.engine.model_runner import ModelRunner
from dllmserve.engine.outputs import Provisional, RequestOutput, StepOutput
from dllmserve.engine.page_pool import PagePool
from dllmserve.engine.prefix_cache import PrefixCache
from dllmserve.engine.protocol import Prompt
from dllmserve.engine.request import Request, SpecialTokens, StepResult
from dllmserve.errors import CapacityError, ValidationError
from dllmserve.models import skinny
from dllmserve.models.transformer import DiffusionTransformer
from dllmserve.sampling_params import SamplingParams
from dllmserve.sparse.state import SparseConfig

log = logging.getLogger(__name__)


class Engine:
    """Step-level diffusion engine. ``tokenizer=None`` serves token ids only (benchmarks).
    An engine built around a model runs where the model is: `config.device` / `config.dtype`
    only place the model that `from_pretrained` / `from_random_shape` build."""

    def __init__(
        self,
        model: DiffusionTransformer,
        tokenizer,
        config: EngineConfig | None = None,
        *,
        model_name: str = "model",
    ) -> None:
        config = config or EngineConfig()
        cfg = model.cfg
        self.model = model
        self.config = config
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.device = model.device
        if self.device.type == "cpu":  # one thread per core stalls on a shared CPU: its share
            torch.set_num_threads(config.threads())
        eot = "<|eot_id|>" if cfg.arch == "llada" else "<|im_end|>"
        eot_id = _special_id(tokenizer, eot) if tokenizer is not None else None
        if cfg.block_diffusion:  # LLaDA2's answer ends at EOS only, as its generate's
            eot_id = None
        self.tokens = SpecialTokens(cfg.mask_token_id, cfg.eos_token_id, eot_id)
        self._decode = fast_decoder(tokenizer) if tokenizer is not None else None
        self.page_bytes = page_bytes(config.page_size, cfg, model.dtype)
        batched_tokens = config.batched_tokens(self.device.type)
        num_pages = config.num_cache_pages or auto_num_pages(
            cfg,
            model.dtype,
            self.device,
            self.page_bytes,
            config.gpu_memory_utilization,
            batched_tokens,
        )
        self.limits = ModelLimits(
            max_len=cfg.max_len,
            n_layers=cfg.n_layers,
            vocab_size=vocabulary(cfg.vocab_size, tokenizer),
            mask_token_id=cfg.mask_token_id,
            shifted_logits=cfg.shifted_logits,
            default_schedule=cfg.default_schedule,
            max_num_batched_tokens=batched_tokens,
            page_size=config.page_size,
            num_cache_pages=num_pages,
            block_diffusion=cfg.block_diffusion,
            default_block_length=cfg.default_block_length,
        )
        cache = KVCache.allocate(num_pages, config.page_size, cfg, model.dtype, self.device)
        self.runner = ModelRunner(
            model,
            cache,
            self.tokens,
            use_graphs=self.device.type == "cuda" and not config.enforce_eager,
            max_lanes=config.max_num_seqs * 2,
        )
        skinny.enabled = self.device.type == "cuda" and config.skinny_gemm
        pool = PagePool(num_pages)
        prefix = None
        if cfg.block_diffusion and config.enable_prefix_caching:
            prefix = PrefixCache(pool, config.page_size)
        self.batcher = Batcher(pool, config.max_num_seqs, batched_tokens, prefix)
        self._rng = random.Random(config.seed)
        self._inflight: InFlight | None = None

    @classmethod
    def from_pretrained(
        cls, model_dir: str | Path, config: EngineConfig | None = None, **options
    ) -> Engine:
        """An engine on a local Hugging Face checkpoint folder; `options` are EngineConfig's."""
        config = EngineConfig.from_options(config, **options)
        model, tokenizer = load_checkpoint(model_dir, config)
        return cls(model, tokenizer, config, model_name=Path(model_dir).name)

    @classmethod
    def from_random_shape(
        cls, shape: str, config: EngineConfig | None = None, *, weight_seed: int = 0, **options
    ) -> Engine:
        """Random weights of a named shape of `dllmserve.models.shapes` with a byte tokenizer
        (the same weights in every process), served as `random-SHAPE`: for benchmarks."""
        config = EngineConfig.from_options(config, **options)
        model, tokenizer = load_random_shape(shape, config, weight_seed)
        return cls(model, tokenizer, config, model_name=f"random-{shape}")

    @property
    def max_num_seqs(self) -> int:
        return self.config.max_num_seqs

    # ---- requests --------------------------------------------------------------------------
    def tokenize(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt: text as given, chat messages through the chat template."""
        chat = not isinstance(prompt, str) and len(prompt) > 0 and isinstance(prompt[0], dict)
        if not (isinstance(prompt, str) or chat):
            return list(prompt)
        if self.tokenizer is None:
            raise ValidationError("prompt", "must be token ids: this engine has no tokenizer")
        if chat:
            prompt = self.tokenizer.apply_chat_template(
                prompt, tokenize=False, add_generation_prompt=True
            )
        return list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def make_request(
        self,
        request_id: str,
        prompt: Prompt,
        params: SamplingParams,
        sparse: SparseConfig | None = None,
        *,
        provisional: bool = False,
    ) -> Request:
        """Tokenize and check a request (once) and build it, without queueing it.
        `provisional`: its step updates carry the steps' provisional tokens."""
        if self.has_request(request_id):
            raise ValidationError("request_id", f"{request_id!r} is already in use")
        ids = self.tokenize(prompt)
        stops, vocab = self.tokens.stop, self.limits.vocab_size
        constraint = request_constraint(params, self.tokenizer, stops, vocab)  # structured output
        least = constraint.min_length if constraint is not None else 0
        spec = resolve_request(self.limits, params, sparse, prompt_ids=ids, min_gen_length=least)
        seed = params.seed if params.seed is not None else self._rng.getrandbits(63)
        kind = BlockRequest if self.limits.block_diffusion else Request
        req = kind(
            request_id,
            ids,
            spec,
            seed=seed,
            tokens=self.tokens,
            shifted=self.limits.shifted_logits,
            provisional=provisional,
        )
        if self._decode is not None:
            req.detokenizer = IncrementalDetokenizer(self._decode)
        req.constraint = constraint
        return req

    def add_request(
        self,
        request_id: str,
        prompt: Prompt,
        sampling_params: SamplingParams,
        sparse_config: SparseConfig | None = None,
        *,
        provisional: bool = False,
    ) -> None:
        """Queue a request; raises ValidationError / CapacityError before touching the batch."""
        self.add(
            self.make_request(
                request_id, prompt, sampling_params, sparse_config, provisional=provisional
            )
        )

    def add(self, req: Request) -> None:
        """Queue a request built by `make_request` (LLM checks a whole batch before any runs)."""
        self.batcher.add(req)

    def abort(self, request_id: str) -> bool:
        """Drop a request now; its pages go back to the pool at once."""
        return self.batcher.abort(request_id)

    def has_request(self, request_id: str) -> bool:
        """Whether the request is waiting or running here."""
        return self.batcher.has(request_id)

    def has_unfinished(self) -> bool:
        return self.batcher.has_unfinished() or self._inflight is not None

    def decode(self, token_ids: list[int]) -> str:
        """Text of token ids, special tokens skipped ("" without a tokenizer)."""
        return self._decode(token_ids) if self._decode is not None else ""

    def stats(self) -> dict[str, int | float]:
        b = self.batcher
        prefix = {}
        if b.prefix is not None:
            prefix = {
                "prefix_cache_hit_rate": b.prefix.hit_rate,
                "prefix_cached_pages": b.prefix.cached_pages,
            }
        return {
            **prefix,
            "running": len(b.running),
            "waiting": len(b.waiting),
            "free_pages": b.pool.num_free,
            "total_pages": b.pool.num_pages,
            "page_size": self.limits.page_size,
            "max_num_seqs": b.max_num_seqs,
            "max_num_batched_tokens": b.max_num_batched_tokens,
            "reserved_tokens": b.reserved_tokens,
        }

    def warm_up(self) -> None:
        """Run, before any traffic, the iterations that traffic meets an idle engine with.

        One request alone (its FULL, SELECT and REUSE steps), then a second one joining it (its
        first step alone, a mixed iteration, two REUSE lanes): their first use compiles Triton
        kernels and captures CUDA graphs, which held the first real requests of a fresh worker
        for seconds (benchmarks/RESULTS.md, time to first update). The requests carry their
        own seed, so the engine's draws for later requests are those of a cold engine.
        A block-diffusion model first captures the graphs of a request alone at every page-table
        width (one lane, or two in a step that stores a block, as a prefix-cache hit's first).
        """
        runner, pool, lim = self.runner, self.batcher.pool, self.limits
        if runner.block_graphs is not None and pool.num_free == pool.num_pages:
            pages = -(-lim.max_len // lim.page_size)
            runner.block_graphs.capture_idle(runner.cache, lim.default_block_length, pages)
        params = SamplingParams(gen_length=64, steps=64, block_length=32, seed=0, stop_at_eos=False)
        prompt = [t for t in range(1, 20) if t != self.tokens.mask][:16]
        try:  # both checked before either runs
            first, second = (
                self.make_request(rid, prompt, params, self._warm_up_sparse())
                for rid in ("warm-up-alone", "warm-up-joining")
            )
        except (ValidationError, CapacityError) as e:  # a model or cache too small for it
            log.warning("warm-up skipped: %s", e)
            return
        self.add(first)
        started = False  # after FULL, SELECT and a REUSE step, with the next one in flight
        while not started and self.has_unfinished():
            started = any(u.request_id == first.request_id and u.step >= 3 for u in self.step())
        self.add(second)
        while self.has_unfinished():
            self.step()

    def _warm_up_sparse(self) -> SparseConfig | None:
        """Sparse steps to warm up, where the model has them (not block diffusion)."""
        return None if self.limits.block_diffusion else SparseConfig()

    # ---- the step --------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[StepOutput]:
        """Run one iteration and return the step updates that are ready.

        Inside a block, an iteration whose next step's plan needs none of its tokens (all-REUSE;
        a block-diffusion step with fixed commit counts) is followed by one chained on the device
        (its tokens scattered in there), launched before its results are read back, so the
        host's bookkeeping overlaps the GPU's work. Its updates come out of the following call.
        """
        self.batcher.admit()
        prev, self._inflight = self._inflight, None
        running = list(self.batcher.running.values())
        fresh = [r for r in running if r.global_step == 0]
        if fresh and len(fresh) < len(running):
            # Newcomers among running requests take their first step alone, queued right
            # behind the iteration in flight: their first update waits for one forward of
            # their own, not for the in-flight results, a host turn and then a mixed
            # iteration (time to first update, docs/design.md §7). The others join next call.
            cur = self.runner.launch(fresh, self.runner.prepare(fresh))
            updates = self._collect(prev) if prev is not None else []
            return updates + self._collect(cur)
        if prev is not None and not self._chainable(prev):
            return self._collect(prev)
        if not running:
            return []
        batch = self.runner.chain(prev, running) if prev else self.runner.prepare(running)
        cur = self.runner.launch(running, batch)
        updates = self._collect(prev) if prev is not None else []
        if self._chainable(cur):
            self._inflight = cur
            return updates
        return updates + self._collect(cur)

    def _chainable(self, flight: InFlight) -> bool:
        """Whether the iteration after `flight` can be launched before `flight`'s results are read:
        the same lanes (`ModelRunner.chainable`), the same requests, each planning its next step
        without `flight`'s tokens (the host state is the one before `flight`'s step), and no
        waiting request that would join."""
        if not self.runner.chainable(flight.batch):
            return False
        running = self.batcher.running
        if len(running) != len(flight.reqs) or self.batcher.next_fits():
            return False
        return all(running.get(r.request_id) is r and r.next_step_planned() for r in flight.reqs)

    def _collect(self, flight: InFlight) -> list[StepOutput]:
        """Apply an iteration's results on the host and say what each request's step did."""
        x0, commit, confidence = flight.wait()
        now = time.monotonic()
        proposed = {  # read before the commits change the canvas and the block
            r.request_id: r.provisional_tokens(x0[i], confidence[i])
            for i, r in enumerate(flight.reqs)
            if r.provisional and confidence is not None
        }
        done = self.batcher.update(flight.reqs, x0, commit, now)
        return [
            self._step_output(req, res, now, proposed.get(req.request_id, [])) for req, res in done
        ]

    def _step_output(
        self, req: Request, res: StepResult, now: float, provisional: list[Provisional]
    ) -> StepOutput:
        text = ""
        if req.detokenizer is not None:
            end, ended = _text_end(req)
            text = req.detokenizer.update(req.generated, end, ended)
        return StepOutput(
            request_id=req.request_id,
            step=req.global_step,
            total_steps=req.total_steps,
            block_index=res.block_index,
            phase=res.phase.name,
            block_length=req.spec.block_length,
            positions=res.positions,
            token_ids=res.token_ids,
            masked_left=req.masked_left,
            block_done=res.block_done,
            answer_length=req.answer_length,
            text_delta=text,
            finish_reason=req.finish_reason,
            output=self._output(req, now) if req.finished else None,
            forward_passes=req.lanes,
            provisional=provisional,
            edits=req.edits if isinstance(req, BlockRequest) else [],
        )

    def _output(self, req: Request, now: float) -> RequestOutput:
        gen = req.generated.tolist()
        text = req.detokenizer.text if req.detokenizer is not None else ""
        pages = req.spec.cache_pages
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
                "kv_cache_pages": pages,
                "kv_cache_bytes": pages * self.page_bytes,
            },
        )


def _text_end(req: Request) -> tuple[int, bool]:
    """How much of the answer has text, and whether that is all of it: the stable prefix
    while the request runs; once it stops, the answer up to its stop token (or the whole
    canvas), so the detokenizer's text is then the final answer's."""
    if req.answer_length is not None:
        return req.answer_length, True
    if req.finished:
        return len(req.generated), True
    return req.stable_len, False


def _special_id(tokenizer, token: str) -> int | None:
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or tid == getattr(tokenizer, "unk_token_id", None):
        return None
    return int(tid)
