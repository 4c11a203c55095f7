"""The experiment lifecycle around a run: plan (estimates and data analysis), calibrate, watch, report, diff.

Nothing here imports torch, mlx or transformers at import time: only `calibrate` (which runs the real
engine) and the dataset analysis of `specc plan` load them, inside the functions that need them.
"""
