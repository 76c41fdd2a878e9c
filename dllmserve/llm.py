"""The offline API of the seed guide: `LLM(path).generate(prompts, params, sparse_configs=...)`."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dllmserve.engine.engine import Engine
from dllmserve.errors import ValidationError
from dllmserve.sampling_params import SamplingParams
from dllmserve.sparse.state import SparseConfig


class LLM:
    """A diffusion LM loaded from a local Hugging Face checkpoint folder, ready to generate.

    `options` are the fields of `dllmserve.engine.config.EngineConfig` (device, dtype,
    max_num_seqs, max_num_batched_tokens, page_size, num_cache_pages, gpu_memory_utilization,
    enforce_eager, seed, tensor_parallel_size); an unknown one raises ValidationError naming it.
    """

    def __init__(self, model: str | Path, **options) -> None:
        self.engine = Engine.from_pretrained(model, **options)
        self._ids = itertools.count()

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def generate(
        self,
        prompts: str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        sparse_configs: SparseConfig | Sequence[SparseConfig | None] | None = None,
        use_tqdm: bool = True,
    ) -> list[dict]:
        """Generate for every prompt; one dict per prompt, in order.

        Prompts are strings (tokenised as they are: apply the chat template first for an
        Instruct model) or lists of token ids. Params and configs are one for all or one per
        prompt. Every request is validated before any runs, so a bad one disturbs nothing.
        """
        if isinstance(prompts, str) or (
            isinstance(prompts, Sequence) and prompts and isinstance(prompts[0], int)
        ):
            prompts = [prompts]  # one prompt, as text or as token ids
        prompts = list(prompts)
        n = len(prompts)
        params = _per_prompt(sampling_params or SamplingParams(), n, "sampling_params")
        sparse = _per_prompt(sparse_configs, n, "sparse_configs")
        ids = [f"offline-{next(self._ids)}" for _ in range(n)]
        reqs = [
            self.engine.make_request(rid, p, sp, sc)
            for rid, p, sp, sc in zip(ids, prompts, params, sparse, strict=True)
        ]
        for r in reqs:
            self.engine.add(r)
        if torch.cuda.is_available() and self.engine.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.engine.device)
        start = time.monotonic()
        outputs: dict[str, dict] = {}
        total_steps = sum(r.total_steps for r in reqs)
        with tqdm(total=total_steps, disable=not use_tqdm, desc="denoising", unit="step") as bar:
            while len(outputs) < n:
                for u in self.engine.step():
                    bar.update(1)
                    if u.finished:
                        bar.update(u.total_steps - u.step)
                        outputs[u.request_id] = u.output.as_dict()
        elapsed = time.monotonic() - start
        peak = (
            torch.cuda.max_memory_allocated(self.engine.device)
            if self.engine.device.type == "cuda"
            else 0
        )
        results = []
        for rid in ids:
            out = outputs[rid]
            out["batch_elapsed"] = elapsed
            out["peak_gpu_memory_bytes"] = peak
            results.append(out)
        return results


def _per_prompt(value, n: int, name: str) -> list:
    if value is None or isinstance(value, (SamplingParams, SparseConfig)):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise ValidationError(name, f"must be one value or one per prompt ({n}), got {len(value)}")
    return value
