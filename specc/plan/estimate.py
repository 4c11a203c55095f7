"""Estimates of time and memory, each with its source. Until a calibration exists, none are shown."""
from __future__ import annotations


def estimates_markdown(plan) -> str:
    return ("Not estimated: no calibration or prior run of this shape is recorded, and specc shows no made-up numbers. "
            "Run `specc calibrate SPEC` on the target hardware to measure tokens/s and peak memory.")
