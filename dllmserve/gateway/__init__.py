"""`dllmserve gateway`: the OpenAI-compatible HTTP API, a process of its own in front of the
schedulers (see docs/http.md for why it is separate and what it serves)."""
