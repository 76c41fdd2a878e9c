"""Every engine knob, its default and its valid range, in one place (docs/design.md §3).

`LLM(model, **options)`, `Engine.from_pretrained`, the worker and the CLI all build this one
dataclass; the worker's flags and DLLMSERVE_* environment variables are generated from its
fields (`dllmserve.cli.config_args`), with the help text of each field's metadata. Torch-free:
the CLI reads it without loading torch.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields, replace

from dllmserve.errors import ValidationError
from dllmserve.models.config import QUANTIZATION_HELP, QUANTIZATIONS

# dtype names accepted, and the canonical name each stands for
DTYPES = {
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "float32": "float32",
    "fp32": "float32",
}
DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?)$")
# Tokens per iteration when max_num_batched_tokens is not given: it also sizes the activation
# memory set aside before the cache pages are counted (docs/design.md §12).
DEFAULT_BATCHED_TOKENS = {"cuda": 32768, "cpu": 8192}


def _help(text: str) -> dict:
    return {"help": text}


@dataclass(frozen=True)
class EngineConfig:
    device: str | None = field(
        default=None, metadata=_help("cpu, cuda or cuda:N (default: cuda when a GPU is there)")
    )
    dtype: str | None = field(
        default=None,
        metadata=_help("bfloat16, float16 or float32 (default: bf16 on a GPU, fp32 on the CPU)"),
    )
    max_num_seqs: int = field(
        default=64,
        metadata=_help(
            "requests in one iteration at most (throughput saturates near 32-64 at LLaDA-8B "
            "size, and every request more lengthens every running request's step)"
        ),
    )
    max_num_batched_tokens: int | None = field(
        default=None,
        metadata=_help(
            "tokens forwarded per iteration at most: a FULL/SELECT lane counts its whole "
            "sequence (default: 32768 on a GPU, 8192 on the CPU)"
        ),
    )
    page_size: int = field(default=16, metadata=_help("kept K/V entries per cache page"))
    num_cache_pages: int | None = field(
        default=None,
        metadata=_help(
            "cache pages (default: what gpu_memory_utilization leaves on a GPU, 1 GiB on the CPU)"
        ),
    )
    gpu_memory_utilization: float = field(
        default=0.9, metadata=_help("share of the GPU's memory the process may use, in (0, 1]")
    )
    quantization: str | None = field(
        default=None,
        metadata=_help(
            f"{QUANTIZATION_HELP}: half those weights' bytes, approximate (docs/design.md "
            "§14); default: the model dtype, exact"
        ),
    )
    enforce_eager: bool = field(default=False, metadata=_help("no CUDA graphs"))
    skinny_gemm: bool = field(
        default=False,
        metadata=_help(
            "on a GPU, run each linear layer of at most 64 rows (REUSE steps at small batch) "
            "by the skinny Triton GEMM (kernels/skinny_gemm.py) where, measured at its first "
            "use, it beats cuBLAS / _scaled_mm; off: always the library's GEMM"
        ),
    )
    seed: int = field(default=0, metadata=_help("seeds the draws of requests that have none"))
    tensor_parallel_size: int = field(default=1, metadata=_help("GPUs per engine (only 1)"))
    enable_prefix_caching: bool = field(
        default=True,
        metadata=_help(
            "share the K/V of prompt blocks across requests (block-diffusion models only, where "
            "it is exact; others have nothing to share)"
        ),
    )
    cpu_threads: int | None = field(
        default=None,
        metadata=_help(
            "torch's intra-op threads of an engine on the CPU (default: $OMP_NUM_THREADS when "
            "set, else the cores this process may use; dllmserve serve gives each CPU worker "
            "its share); more threads than free cores make every step wait for the slowest"
        ),
    )

    def __post_init__(self) -> None:
        # torch.device / torch.dtype values become their names (this module stays torch-free)
        if self.device is not None and not isinstance(self.device, str):
            object.__setattr__(self, "device", str(self.device))
        if self.dtype is not None and not isinstance(self.dtype, str):
            object.__setattr__(self, "dtype", str(self.dtype).removeprefix("torch."))
        if self.device is not None and not DEVICE_RE.match(self.device):
            raise ValidationError("device", f"must be cpu, cuda or cuda:N, got {self.device!r}")
        if self.dtype is not None:
            if self.dtype not in DTYPES:
                names = sorted(DTYPES)
                raise ValidationError("dtype", f"must be one of {names}, got {self.dtype!r}")
            object.__setattr__(self, "dtype", DTYPES[self.dtype])
        _check_int("max_num_seqs", self.max_num_seqs, 1)
        _check_int("max_num_batched_tokens", self.max_num_batched_tokens, 1, optional=True)
        _check_int("page_size", self.page_size, 1)
        _check_int("num_cache_pages", self.num_cache_pages, 1, optional=True)
        _check_int("seed", self.seed, 0)
        _check_int("cpu_threads", self.cpu_threads, 1, optional=True)
        u = self.gpu_memory_utilization
        if isinstance(u, bool) or not isinstance(u, (int, float)) or not 0.0 < u <= 1.0:
            raise ValidationError("gpu_memory_utilization", f"must be in (0, 1], got {u!r}")
        if self.quantization is not None and self.quantization not in QUANTIZATIONS:
            raise ValidationError(
                "quantization",
                f"must be one of {list(QUANTIZATIONS)} or None, got {self.quantization!r}",
            )
        for name in ("enforce_eager", "enable_prefix_caching", "skinny_gemm"):
            if not isinstance(getattr(self, name), bool):
                raise ValidationError(name, f"must be a bool, got {getattr(self, name)!r}")
        if self.tensor_parallel_size != 1:
            raise ValidationError(
                "tensor_parallel_size", f"only 1 is supported, got {self.tensor_parallel_size!r}"
            )

    @classmethod
    def from_options(cls, base: EngineConfig | None = None, **options) -> EngineConfig:
        """`base` (or the defaults) with `options` set; an unknown option is an error naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValidationError(
                ", ".join(unknown), f"unknown engine option; the options are {sorted(known)}"
            )
        return replace(base or cls(), **options)

    def threads(self) -> int:
        """Intra-op threads for an engine on the CPU: cpu_threads, else $OMP_NUM_THREADS (the
        operator's, or the tests' pin), else every core this process may use."""
        if self.cpu_threads is not None:
            return self.cpu_threads
        omp = os.environ.get("OMP_NUM_THREADS", "").strip()
        if omp.isdigit() and int(omp) > 0:
            return int(omp)
        return usable_cores()

    def batched_tokens(self, device_type: str) -> int:
        """max_num_batched_tokens, or the default of the device the engine runs on."""
        if self.max_num_batched_tokens is not None:
            return self.max_num_batched_tokens
        return DEFAULT_BATCHED_TOKENS.get(device_type, DEFAULT_BATCHED_TOKENS["cpu"])


def usable_cores() -> int:
    """The cores this process may run on (its affinity: a container's or taskset's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no sched_getaffinity (macOS)
        return max(1, os.cpu_count() or 1)


def _check_int(name: str, value: object, lo: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        what = f"an integer >= {lo}" + (" or None" if optional else "")
        raise ValidationError(name, f"must be {what}, got {value!r}")
