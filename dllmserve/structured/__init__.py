"""Structured outputs for diffusion LMs: answers that match a JSON schema, a regex or a choice
by construction (docs/structured_outputs.md). Importing this package needs no torch."""

from dllmserve.structured.spec import StructuredOutput

__all__ = ["StructuredOutput"]
