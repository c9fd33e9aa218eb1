"""DVC stage `generate`: base scenarios x vehicles -> the 18 raw JSON files in `paths.raw`."""

import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False)


@app.command()
def main(params: Annotated[Path, typer.Option("--params", help="params file")] = Path("params.yaml")) -> None:
    from hrm.data.generation.generate import run
    from hrm.io import UserError

    try:
        summary = run(params)
    except UserError as err:  # a ConfigError is one too
        print(f"error: {err}", file=sys.stderr)
        raise typer.Exit(1) from None
    counts = summary["counts"]
    rejections = summary["rejections"]
    print(
        f"generate: {counts['train']['examples']} train + {counts['test']['examples']} test examples, "
        f"{rejections['attempts']} attempts, {rejections['by_reason']['tie']} rejected for ties"
    )


if __name__ == "__main__":
    app()
