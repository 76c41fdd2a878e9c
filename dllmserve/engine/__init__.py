"""The diffusion engine: requests, page pool, batched sampling and the step loop."""
