"""Shared fixtures: tiny checkpoints in the real Hugging Face layouts, built once per session.

Torch threads are pinned (one unless $OMP_NUM_THREADS says otherwise), in this process and,
through the environment, in every process a test starts: on a busy 2-core machine torch's
default of one thread per core makes each step wait for a descheduled thread, and the suite
takes several times as long.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch starts its pool; children inherit

import pytest  # noqa: E402
import torch  # noqa: E402

from dllmserve.testing.tiny_models import write_tiny_checkpoint  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def llada_dir(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("llada"), "llada", seed=1)


@pytest.fixture(scope="session")
def llada_gqa_dir(tmp_path_factory):
    return write_tiny_checkpoint(
        tmp_path_factory.mktemp("llada_gqa"), "llada", seed=2, n_heads=4, n_kv_heads=2
    )


@pytest.fixture(scope="session")
def llada_eos_dir(tmp_path_factory):
    """A tiny LLaDA that really ends its answers: the LM-head rows of EOS and <|eot_id|> are
    scaled ten-fold, so both often win (a plain random model almost never picks them)."""
    return write_tiny_checkpoint(
        tmp_path_factory.mktemp("llada_eos"), "llada", seed=1, stop_scale=10.0
    )


@pytest.fixture(scope="session")
def dream_dir(tmp_path_factory):
    """Dream's real head layout in miniature: 7 query heads per KV head, head dim 16 (the
    smallest the Triton kernels take)."""
    return write_tiny_checkpoint(
        tmp_path_factory.mktemp("dream"), "dream", seed=3, d_model=112, n_heads=7, n_kv_heads=1
    )
