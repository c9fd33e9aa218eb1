"""DVC stage `evaluate`: the checkpoint on train and test, route-aware metrics, plots and the offline report."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False)


@app.command()
def main(
    params: Annotated[Path, typer.Option("--params", help="params.yaml to read")] = Path("params.yaml"),
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bars")] = False,
) -> None:
    """Evaluate `paths.model` on `paths.hrm` and write `paths.eval_reports`."""
    from hrm.config import load_params
    from hrm.evaluation.runner import run_evaluation, summary_lines
    from hrm.io import UserError

    try:
        metrics = run_evaluation(load_params(params), progress=not quiet)
    except UserError as err:  # a ConfigError is one too
        print(f"error: {err}", file=sys.stderr)
        raise typer.Exit(1) from None
    for line in summary_lines(metrics):
        print(line)


if __name__ == "__main__":
    app()
