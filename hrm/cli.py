"""The `hrm` command (pyproject: `hrm = "hrm.cli:app"`): one small function per subcommand; torch is imported
only inside the called modules, so `hrm --help` stays instant."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    help="HRM city routing: pipeline helpers (run the pipeline itself with `dvc repro`).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Keeps `hrm` a command group even while it has a single subcommand."""


def _sets(help: str) -> Any:
    """The repeatable `--set/-S key=value` option (the `dvc exp run -S` syntax) of every subcommand."""
    return typer.Option("--set", "-S", help=help)


# Options quickstart and compare share: both run params.yaml's profiles as DVC experiments.
ProfileParams = Annotated[Path, typer.Option("--params", help="params.yaml holding profiles.NAME")]
ProfileName = Annotated[str, typer.Option("--profile", help="params.yaml profiles.NAME (quick, tiny, ...)")]


@contextmanager
def _user_errors() -> Iterator[None]:
    """A user's mistake (`UserError`) is one `error:` line and exit 1, no traceback; Ctrl-C is exit 130."""
    from hrm.io import UserError

    try:
        yield
    except UserError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@app.command()
def doctor(
    params: Annotated[Path, typer.Option("--params", help="params.yaml of the run to check")] = Path(
        "params.yaml"
    ),
    device: Annotated[
        str | None, typer.Option("--device", help="auto | cpu | cuda | cuda:N | mps (default: train.device)")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    quick: Annotated[
        bool, typer.Option("--quick", help="seconds: tiny shapes for the checks, analytic memory estimate")
    ] = False,
    overrides: Annotated[
        list[str] | None, _sets("override a param, as `dvc exp run -S`: train.global_batch_size=384")
    ] = None,
    profile: Annotated[
        str | None, typer.Option("--profile", help="apply params.yaml profiles.NAME first (e.g. quick)")
    ] = None,
    world_size: Annotated[
        int | None,
        typer.Option("--world-size", help="devices sharing the global batch (default: $WORLD_SIZE or 1)"),
    ] = None,
) -> None:
    """Check this machine for the configured run: device, SDPA, bf16, determinism, memory. Exit 1 if not ready."""
    from hrm.doctor import main

    with _user_errors():
        code = main(
            params_path=params,
            device=device,
            as_json=json_output,
            quick=quick,
            overrides=overrides or (),
            profile=profile,
            world_size=world_size,
        )
    raise typer.Exit(code)


@app.command()
def quickstart(
    params: ProfileParams = Path("params.yaml"),
    profile: ProfileName = "quick",
    overrides: Annotated[
        list[str] | None, _sets("one more override after the profile's, e.g. arch.name=transformer")
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="experiment name (default: the profile's)")
    ] = None,
) -> None:
    """Run the CPU quick profile end to end as a DVC experiment; the workspace keeps the paper params."""
    from hrm.quickstart import quickstart as run_profile

    with _user_errors():
        run_profile(params_path=params, profile=profile, extra=tuple(overrides or ()), name=name)


@app.command()
def compare(
    params: ProfileParams = Path("params.yaml"),
    profile: ProfileName = "quick",
    archs: Annotated[
        str, typer.Option("--archs", help="comma-separated arch names (those build_model knows)")
    ] = "hrm_v1,transformer",
    seeds: Annotated[
        int, typer.Option("--seeds", help="runs per arch: train.seed = first seed + 0..N-1")
    ] = 3,
    data_seeds: Annotated[
        bool, typer.Option("--data-seeds", help="also vary generate.seed per run (model + data variance)")
    ] = False,
    jobs: Annotated[
        int, typer.Option("--jobs", help="DVC queue workers running at once, 1 to the CPU core count")
    ] = 1,
    overrides: Annotated[
        list[str] | None, _sets("key=value for every run; the same key twice = two variants")
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="experiment name prefix (default: cmp-<profile>)")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="report folder")] = Path("reports/compare"),
    rev: Annotated[
        str | None,
        typer.Option(
            "--rev", help="report the experiments queued from this commit (its params.yaml); queue nothing"
        ),
    ] = None,
) -> None:
    """Every arch x seed as DVC experiments on DVC's queue; mean, sd, min, max per arch with curves and a report."""
    import shlex
    import sys

    from hrm.compare.command import check_all_succeeded
    from hrm.compare.command import compare as run_compare

    with _user_errors():
        results = run_compare(
            params_path=params,
            profile=profile,
            archs=[a.strip() for a in archs.split(",") if a.strip()],
            seeds=seeds,
            data_seeds=data_seeds,
            sets=tuple(overrides or ()),
            jobs=jobs,
            name=name,
            out_dir=out,
            rev=rev,
            command=shlex.join(["hrm", *sys.argv[1:]]),
        )
        check_all_succeeded(results, out)  # exit 1 naming each failed run, after the report is written


if __name__ == "__main__":  # pragma: no cover
    app()
