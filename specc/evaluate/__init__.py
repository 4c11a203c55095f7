"""Task evaluation: prompts from the dataset's own format, generation through the backend, a scorer,
and the statistics a verdict needs (mean, 95% interval, n). Used after training, by control runs,
during training (`every`) and by `specc eval`."""
