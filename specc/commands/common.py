"""Options that several commands share, spelled once."""
from __future__ import annotations

import typer

CALIBRATIONS_HELP = "calibrations directory (default: $SPECC_CALIBRATIONS, else ./calibrations)"


def calibrations_option():
    """--calibrations DIR (`specc plan`, `report`, `calibrate`)."""
    return typer.Option(None, "--calibrations", help=CALIBRATIONS_HELP)
