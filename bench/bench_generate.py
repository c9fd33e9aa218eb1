"""Generation speed on one core (CPU seconds of this process): the params file's configuration, no files written.

PYTHONPATH=$PWD python bench/bench_generate.py [--params params.yaml] [--repeat 1]
"""

import json
import time
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False)


@app.command()
def main(
    params: Annotated[Path, typer.Option("--params")] = Path("params.yaml"),
    repeat: Annotated[int, typer.Option("--repeat")] = 1,
) -> None:
    from hrm.config import load_params
    from hrm.data.generation import generate

    settings = generate.GenerateSettings.from_params(load_params(params), str(params))
    best_search = best_total = float("inf")
    for _ in range(repeat):
        started = time.process_time()  # CPU time of this process: robust on a shared machine
        bases, rejections = generate.generate_bases(settings, progress=False)
        searched = time.process_time()
        files = generate.render_files(settings, bases, rejections)
        finished = time.process_time()
        best_search = min(best_search, searched - started)
        best_total = min(best_total, finished - started)
    examples = sum(len(split) for split in bases.values()) * len(settings.cost_model.vehicles)
    stats = rejections.to_dict(kept=sum(len(split) for split in bases.values()))
    attempts = stats["attempts"]
    print(f"grid {settings.rows}x{settings.cols}, {examples} examples ({settings.bases})")
    print(f"scenarios + routes: {best_search:.2f} s = {examples / best_search:.0f} examples/s")
    print(
        f"with the 18 JSON files rendered: {best_total:.2f} s = {examples / best_total:.0f} examples/s, "
        f"{sum(len(b) for b in files.values()) / 1e6:.1f} MB"
    )
    print(f"attempts {attempts}, rejected {stats['rejected']} ({stats['rejected_share']:.1%} of attempts)")
    for reason, count in stats["by_reason"].items():
        print(f"  {reason:17s} {count:5d}  {count / attempts:6.1%} of attempts")
    print(f"  ties by vehicle: {json.dumps(stats['tie_by_vehicle'])}")


if __name__ == "__main__":
    app()
