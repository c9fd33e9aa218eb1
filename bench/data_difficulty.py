"""How much search the converted data needs, without a model: the reference rows of the evaluate stage.

Per split: examples that need a detour (no optimal route is monotone), and the route-optimal rate of the
three baselines the evaluation prints next to a model (copy the input, best monotone path, the car's route
for every vehicle), overall and per vehicle. Reads the HRM layout (`paths.hrm`, after `dvc repro convert`).

PYTHONPATH=$PWD python bench/data_difficulty.py [--params params.yaml]
"""

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

app = typer.Typer(add_completion=False)


@app.command()
def main(params: Annotated[Path, typer.Option("--params")] = Path("params.yaml")) -> None:
    from hrm.config import load_params
    from hrm.evaluation import metrics as M
    from hrm.evaluation.data import load_identifier_names, load_route_task, load_split
    from hrm.evaluation.runner import BLIND_VEHICLE

    root = Path(load_params(params)["paths"]["hrm"])
    for name in ("train", "test"):
        data = load_split(root, name)
        task = load_route_task(root, data.metadata)
        names = load_identifier_names(root, data.metadata.num_puzzle_identifiers)
        optimum = M.optimal_costs(data.inputs, data.identifiers, task)
        monotone_preds, monotone_cost = M.monotone_baseline(data.inputs, data.identifiers, task)
        detour = M.needs_detour(optimum, monotone_cost)
        rows = {
            "copy the input": data.inputs,
            "best monotone path": monotone_preds,
            f"{BLIND_VEHICLE}'s route for all": M.vehicle_blind_baseline(
                data.inputs, task, names.index(BLIND_VEHICLE)
            ),
        }
        print(f"{name}: {len(data)} examples, {detour.sum()} need a detour ({detour.mean():.1%})")
        present = [int(i) for i in np.unique(data.identifiers)]
        print(f"  {'route optimal':28s} {'all':>7s}" + "".join(f" {names[i]:>7s}" for i in present))
        for label, preds in rows.items():
            scores = M.score_predictions(data.inputs, preds, data.labels, data.identifiers, 0, task, optimum)
            by_vehicle = [scores.route_optimal[data.identifiers == i].mean() for i in present]
            print(
                f"  {label:28s} {scores.route_optimal.mean():7.1%}"
                + "".join(f" {v:7.1%}" for v in by_vehicle)
            )


if __name__ == "__main__":
    app()
