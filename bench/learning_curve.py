"""A short CPU run through the real trainer on a small synthetic task, to show that the model learns.

Task (built here, HRM layout, structured like our routing data): each group is one random 4x4 grid of tokens
1..7 and holds 4 puzzles, puzzle identifiers 1..4 (our "vehicles"), one example each; the label of cell i is
`(input[i] + input[i-1] + id) % 7 + 1`, so a model must use its neighbour (attention + positions) and the puzzle
embedding (sign-SGD) to be right, and no label is 0 (every cell counts, as in our data). 256 train groups,
64 unseen test groups. The run writes dvclive files like the train stage; this prints rows from its TSVs.

    PYTHONPATH=$PWD python bench/learning_curve.py [--out /tmp/hrm-learning-curve]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from _common import arch_section, train_section, write_layout

ARCH = arch_section(
    H_layers=1,
    L_layers=1,
    hidden_size=64,
    num_heads=4,
    puzzle_emb_ndim=64,
    halt_max_steps=4,
    forward_dtype="float32",
)
TRAIN = train_section(
    global_batch_size=64, epochs=240, eval_interval=40, lr=1.0e-3, lr_warmup_steps=50, device="cpu", threads=1
)


def write_split(folder: Path, groups: int, seed: int, side: int = 4, vehicles: int = 4) -> None:
    rng = np.random.default_rng(seed)
    grids = rng.integers(1, 8, size=(groups, side * side))
    inputs = np.repeat(grids, vehicles, axis=0)
    pid = np.tile(np.arange(1, vehicles + 1), groups)
    labels = (inputs + np.roll(inputs, 1, axis=1) + pid[:, None]) % 7 + 1
    write_layout(folder, inputs, labels, vocab_size=8, vehicles=vehicles)


def rows(log_dir: Path, kind: str, name: str) -> dict[int, float]:
    lines = (log_dir / "plots" / "metrics" / kind / f"{name}.tsv").read_text().splitlines()[1:]
    return {int(step): float(value) for step, value in (line.split("\t") for line in lines)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("/tmp/hrm-learning-curve"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    from hrm.training.loop import train

    torch.set_num_threads(args.threads)
    shutil.rmtree(args.out, ignore_errors=True)
    data = args.out / "data"
    write_split(data / "train", 256, seed=1)
    write_split(data / "test", 64, seed=2)
    params = {
        "arch": ARCH,
        "train": TRAIN,
        "paths": {
            "hrm": str(data),
            "checkpoints": str(args.out / "checkpoints"),
            "model": str(args.out / "hrm.pt"),
            "train_log": str(args.out / "train_log"),
        },
    }
    train(params)
    log = args.out / "train_log"
    train_loss = rows(log, "train", "lm_loss")
    train_acc = rows(log, "train", "accuracy")
    train_exact = rows(log, "train", "exact_accuracy")
    print(
        "\ntrain (from plots/metrics/train/*.tsv; accuracy columns: last step <= row's step with halted rows)"
    )
    print(f"{'step':>6} {'lm_loss':>9} {'accuracy':>9} {'exact':>7}")
    last_step = max(train_loss)
    for step in sorted({1, 25, 50, 100, 200, 300, 400, 500, 600, 700, 800, 900, last_step}):
        if step > last_step:
            continue
        acc_step = max(s for s in train_acc if s <= step) if any(s <= step for s in train_acc) else None
        acc = f"{train_acc[acc_step]:9.4f} {train_exact[acc_step]:7.4f}" if acc_step else f"{'-':>9} {'-':>7}"
        print(f"{step:>6} {train_loss[step]:9.4f} {acc}")
    print("\neval on unseen grids (plots/metrics/eval/*.tsv)")
    print(f"{'step':>6} {'lm_loss':>9} {'accuracy':>9} {'exact':>7} {'steps':>6}")
    eval_acc, eval_exact = rows(log, "eval", "accuracy"), rows(log, "eval", "exact_accuracy")
    eval_loss, eval_steps = rows(log, "eval", "lm_loss"), rows(log, "eval", "steps")
    for step in sorted(eval_acc):
        print(
            f"{step:>6} {eval_loss[step]:9.4f} {eval_acc[step]:9.4f} {eval_exact[step]:7.4f} {eval_steps[step]:6.1f}"
        )


if __name__ == "__main__":
    main()
