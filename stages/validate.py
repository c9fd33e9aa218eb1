"""DVC stage `validate`: check the raw files and the HRM layout, write reports/data/compliance.{json,md} and
scenarios.png; exit 1 below the threshold or on any critical failure."""

import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False)


@app.command()
def main(params: Annotated[Path, typer.Option("--params", help="params file")] = Path("params.yaml")) -> None:
    from hrm.data.validation.validate import run
    from hrm.io import UserError

    try:
        validation = run(params)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise typer.Exit(1) from None
    report = validation.report
    categories = ", ".join(f"{name} {value:.4f}" for name, value in report.category_scores.items())
    print(
        f"validate: compliance {report.score:.4f} >= {report.threshold:.2f}, no critical failure: PASS "
        f"({categories}); {validation.seconds:.1f} s"
    )


if __name__ == "__main__":
    app()
