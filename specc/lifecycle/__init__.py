"""The experiment lifecycle around a run: plan, calibrate, watch, report, diff (estimates: specc/estimate/).

- planning.py, plan_view.py, analysis.py: `specc plan` (the model check and dataset analysis, estimates, fits)
- calibrate.py, calibrate_measure.py, calibrate_view.py: `specc calibrate` (measure run shapes)
- fold_accuracy.py: `specc calibrate --from-runs` (time accuracies into calibrations/)
- rundata.py, verdict.py, accuracy.py, advice.py, report.py, report_view.py, plots.py: `specc report`
- watch.py, liveness.py, watch_flags.py: `specc watch`
- specdiff.py: `specc diff`

Nothing here imports torch, mlx or transformers at import time: only `calibrate` (which runs the real
engine) and the dataset analysis of `specc plan` load them, inside the functions that need them.
"""
