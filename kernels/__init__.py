"""Attention and selection kernels of dLLM-Serve.

Layouts: tensors are packed ("varlen") along dim 0; index tensors are int32 on the tensors'
device; GQA query head h reads KV head h // (H // Hkv); outputs have q's dtype and are
accumulated in fp32. The plain-PyTorch versions in ``reference`` are the CPU path.
"""

from .reference import reuse_attention, select_and_store, varlen_attention

__all__ = ["reuse_attention", "select_and_store", "varlen_attention"]
