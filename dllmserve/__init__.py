"""dLLM-Serve: serving for masked-diffusion language models (LLaDA, Dream).

`LLM` is imported on first use, so the scheduler and the clients, which need only the request
types, do not import torch.
"""

from dllmserve.errors import CapacityError, CheckpointError, UnsupportedModelError, ValidationError
from dllmserve.sampling_params import SamplingParams
from dllmserve.sparse.state import SparseConfig

__version__ = "0.1.0"

__all__ = [
    "LLM",
    "CapacityError",
    "CheckpointError",
    "SamplingParams",
    "SparseConfig",
    "UnsupportedModelError",
    "ValidationError",
    "__version__",
]


def __getattr__(name: str):
    if name == "LLM":
        try:
            from dllmserve.llm import LLM
        except ModuleNotFoundError as e:  # the base install: the client and the CLI only
            raise ImportError(
                f"dllmserve.LLM needs the engine ({e.name} is not installed): "
                "pip install 'dllmserve[engine]'"
            ) from e
        return LLM
    raise AttributeError(f"module 'dllmserve' has no attribute {name!r}")
