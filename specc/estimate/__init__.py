"""Time and memory estimates, each with the source it came from; calibration files; run shapes.

Used by the compile stage (specc/plan: `attach.apply_estimates`, plan.md's `markdown.estimates_markdown`)
and by the lifecycle (`specc plan`, `report`, `calibrate`); it imports neither. Pure Python: no torch,
no transformers, no runs/ at compile time (priors read runs/ for `specc plan` only).

- shape.py: RunShape (what decides speed and memory), device keys
- calibrations.py: calibrations/<device key>.json, read and written
- result.py: RunFacts (what a run will do) and Estimate (what it will cost)
- facts.py: steps, tokens, evaluations and checkpoints from a config
- sources.py: estimate_run: calibration, else prior, else the profile's declared figure
- priors.py: finished runs in runs/ as priors, scaled and marked; their memory
- evidence.py: which finished runs measured what they planned (priors, time accuracy)
- fit.py: the time window, the batch for a GPU, GPU-hours
- memory.py: peak GPU memory of a run shape before it runs (formula, calibrated), the largest batch
- attach.py: estimates into a compiled plan (config.json, --time, --signal)
- markdown.py: plan.md's "## Estimates"
"""
