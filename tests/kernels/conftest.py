"""Kernel tests run the Triton kernels on the GPU when there is one, else in Triton's CPU
interpreter; the interpreter must be chosen before any kernel module imports triton."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _triton_on_cpu(monkeypatch):
    """Route the dispatchers to the Triton kernels for CPU tensors as well."""
    import dllmserve.kernels as kernels

    monkeypatch.setattr(kernels, "force_triton", True)
