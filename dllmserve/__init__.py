"""dLLM-Serve: serving for masked-diffusion language models (LLaDA, Dream)."""

from dllmserve.errors import CapacityError, CheckpointError, UnsupportedModelError, ValidationError
from dllmserve.llm import LLM
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
