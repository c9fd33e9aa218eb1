"""DVC stage `convert`: the 18 raw JSON files in `paths.raw` -> HRM's layout in `paths.hrm`."""

import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False)


@app.command()
def main(
    params: Annotated[Path, typer.Option("--params", help="params file")] = Path("params.yaml"),
    strict: Annotated[
        bool | None,
        typer.Option(
            "--strict/--no-strict", help="refuse files that fail validation (default: convert.strict)"
        ),
    ] = None,
) -> None:
    from hrm.data.conversion.convert import run
    from hrm.io import UserError

    try:
        report = run(params, strict=strict)
    except UserError as err:  # a ConfigError is one too
        print(f"error: {err}", file=sys.stderr)
        raise typer.Exit(1) from None
    for issue in report["issues"]:
        print(f"warning: {issue}", file=sys.stderr)
    counts = report["counts"]
    print(
        f"convert: {report['source']} files -> {report['out_dir']} (seq_len {report['seq_len']}, vocab "
        f"{report['vocab_size']}; {counts['train']['examples']} train, {counts['test']['examples']} test examples)"
    )


if __name__ == "__main__":
    app()
