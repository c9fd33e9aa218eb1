"""DVC stage `train`: train HRM on `paths.hrm`, resuming from `paths.checkpoints` by itself (also under torchrun)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False)


@app.command()
def main(
    params: Annotated[Path, typer.Option("--params", help="params.yaml to read")] = Path("params.yaml"),
) -> None:
    from hrm.config import load_params
    from hrm.io import UserError
    from hrm.training.loop import TrainingInterrupted, train

    try:
        train(load_params(params))
    except UserError as err:  # a ConfigError is one too
        print(f"error: {err}", file=sys.stderr)
        raise typer.Exit(1) from None
    except TrainingInterrupted as err:
        print(str(err), file=sys.stderr)
        raise typer.Exit(128 + err.signum) from None


if __name__ == "__main__":
    app()
