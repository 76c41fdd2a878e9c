"""The diffusion engine (docs/design.md §2, §7): `config` (every knob), `inputs` (each
request checked once), `request` (its state and transitions), `batcher` (who runs),
`model_runner` (the device side) and `engine` (the step that composes them)."""
