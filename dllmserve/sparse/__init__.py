"""Head-level sparse attention: configuration and the per-request state machine."""
