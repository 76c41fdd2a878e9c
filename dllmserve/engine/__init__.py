"""The diffusion engine (docs/design.md, "The engine"): `config` (every knob), `inputs` (each
request checked once), `request` (its state and transitions), `batcher` (who runs),
`model_runner` (the device side) and `engine` (the step that composes them)."""
