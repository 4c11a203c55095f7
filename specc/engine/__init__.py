"""The training engine: the loop, data order, schedules, checkpoints and every policy; backends only run the model."""
