"""`specc check`: validate specs and the model and data files on this machine; write nothing."""
from __future__ import annotations

from pathlib import Path
from typing import List

import typer
from rich.markup import escape

from specc.cli import app
from specc.console import stdout_console
from specc.errors import SpecError


@app.command()
def check(specs: List[Path] = typer.Argument(..., help="spec files")):
    """Validate specs (syntax, fields, cross-field rules, resources) and the model and data files on this machine;
    write nothing."""
    from specc.plan.experiments import plan_specs
    from specc.plan.inputs import check_inputs

    reports = [(loaded, plan, check_inputs(plan, loaded)) for loaded, plan in plan_specs(specs)]
    problems = [issue for _, _, r in reports for issue in r.problems]
    if problems:
        raise SpecError(problems, stage="check")
    out = stdout_console()
    for loaded, plan, inputs in reports:
        n_control = sum(r.kind == "control" for r in plan.runs)
        extra = f" + {n_control} control" if n_control else ""
        out.print(f"[green]ok[/] {escape(str(loaded.path))}: experiment {plan.experiment}, "
                  f"{len(plan.runs) - n_control} run(s){extra}")
        for w in plan.warnings:
            out.print(f"  [yellow]warning[/]: {escape(w)}")
        if inputs.elsewhere:
            out.print(f"  note: not on this machine, so not checked here: {escape(', '.join(inputs.elsewhere))}")
