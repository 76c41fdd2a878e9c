"""Load a checkpoint's fast tokenizer (tokenizer.json + tokenizer_config.json) offline."""

from __future__ import annotations

import warnings
from pathlib import Path

from dllmserve.errors import CheckpointError


def load_tokenizer(model_dir: str | Path):
    """A Hugging Face fast tokenizer with the checkpoint's chat template."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not (Path(model_dir) / "tokenizer.json").is_file():
        raise CheckpointError(f"{model_dir} has no tokenizer.json")
    hf_logging.set_verbosity_error()  # config model types unknown to transformers are expected
    # Real checkpoints' config.json carry an `auto_map` to their modeling code; without an
    # explicit False, transformers stops at a "run the custom code? [y/N]" prompt. The
    # tokenizer is a plain fast tokenizer and needs none of that code.
    with warnings.catch_warnings():  # notes on config keys (rope_scaling) it does not use
        warnings.simplefilter("ignore", FutureWarning)
        return AutoTokenizer.from_pretrained(
            str(model_dir), local_files_only=True, trust_remote_code=False
        )
