"""The range a user should expect from `hrm quickstart`: the quick profile's runs over seeds, architectures and
the CPU kernel sets torch can be told to use on this machine.

Each run is the quickstart's own params (`config.run_params(params, "quick", ["arch.name=A", "train.seed=S"])`)
through the stage scripts (train, then evaluate), with only the output paths moved under `--out`; the data are
generated and converted once (integer-only, byte-identical under every kernel set). A kernel set is a set of
environment variables read when torch loads: ATen's vectorised kernels (`ATEN_CPU_CAPABILITY`), MKL's BLAS code
path (`MKL_ENABLE_INSTRUCTIONS`) and oneDNN's (`ONEDNN_MAX_CPU_ISA`). For each set the script records what the
libraries report they use (ATen's capability, MKL's and oneDNN's verbose lines) and a fingerprint of a matmul and
a softmax, so a set that was not honoured shows up as a fingerprint equal to another set's.

    PYTHONPATH=$PWD python bench/quick_spread.py --seeds 5 --jobs 2 --out /tmp/quick-spread \
        --json docs/results/quick-spread.json

Finished runs are kept (`--out/<kernels>/<arch>-s<seed>/metrics.json`), so a second call continues; the trainer
resumes an interrupted run from its checkpoints.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))  # _common, also when loaded by path (tests)

from _common import run_paths  # noqa: E402

from hrm.config import load_params, run_params  # noqa: E402
from hrm.quickstart import settings_fingerprint  # noqa: E402

# The kernel sets: name -> environment read when torch loads. "native" sets nothing: what torch picks on this CPU.
# ATen's vectorised kernels, MKL's BLAS (its ISA cap and its conditional-reproducibility mode) and oneDNN's ISA cap;
# a set whose probe fingerprint equals an earlier one's did not change the kernels the trainer uses and is not run.
KERNEL_SETS: dict[str, dict[str, str]] = {
    "native": {},
    "aten-avx512": {"ATEN_CPU_CAPABILITY": "avx512"},
    "aten-avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
    "mkl-avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "mkl-sse4_2": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
    "mkl-cbwr-compatible": {"MKL_CBWR": "COMPATIBLE"},
    "onednn-sse41": {"ONEDNN_MAX_CPU_ISA": "SSE41"},
    "portable": {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"},
}
# ATen accepts a capability the CPU lacks and then dies on its first instruction (SIGILL): asked only when present.
NEEDS_FLAG = {"aten-avx512": "avx512f", "aten-avx2": "avx2"}

PROBE = r"""
import hashlib, json, os, sys
import torch
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
a = torch.randn(257, 129, generator=g)
b = torch.randn(129, 263, generator=g)
q = torch.randn(2, 4, 65, 32, generator=g)
fd = os.dup(1)
r, w = os.pipe()
os.dup2(w, 1)
with torch.backends.mkl.verbose(torch.backends.mkl.VERBOSE_ON):
    mm = a @ b
sys.stdout.flush()
os.dup2(fd, 1)
os.close(w)
mkl_lines = os.read(r, 1 << 16).decode(errors="replace").splitlines()
outputs = [mm, torch.nn.functional.linear(a, b.T[:64].contiguous()), torch.softmax(a, dim=-1),
           torch.nn.functional.scaled_dot_product_attention(q, q, q), torch.rsqrt(a.square().mean(-1))]
print(json.dumps({
    "aten": torch.backends.cpu.get_cpu_capability(),
    "mkl_verbose": next((ln for ln in mkl_lines if "MKL" in ln), "")[:200],
    "fingerprint": "-".join(hashlib.sha256(t.numpy().tobytes()).hexdigest()[:6] for t in outputs),
}))
"""


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.is_file() else ""
    names = [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.is_file() else ""
    return set(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))


def probe_kernels(name: str) -> dict[str, Any]:
    """What torch and MKL report under kernel set `name`, and a fingerprint of the ops the trainer uses."""
    flag = NEEDS_FLAG.get(name)
    if flag and flag not in cpu_flags():
        return {"error": f"this CPU has no {flag}"}
    env = {**os.environ, **KERNEL_SETS[name]}
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        return {"error": (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def _run(command: list[str], env: dict[str, str], log: Path) -> None:
    with log.open("a", encoding="utf-8") as out:
        result = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}); see {log}")


def prepare_data(out: Path, params: dict[str, Any]) -> dict[str, str]:
    """Generate and convert the quick data once; the paths every run reads."""
    data = out / "data"
    paths = {"raw": str(data / "raw"), "hrm": str(data / "hrm")}
    if (data / "hrm" / "test" / "dataset.json").is_file():
        return paths
    data.mkdir(parents=True, exist_ok=True)
    params = {**params, "paths": {**params["paths"], **paths, "data_reports": str(data / "reports")}}
    (data / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    for stage in ("generate", "convert"):
        _run(
            [sys.executable, "-m", f"stages.{stage}", "--params", str(data / "params.yaml")],
            dict(os.environ),
            data / "log.txt",
        )
    return paths


def run_one(out: Path, kernels: str, arch: str, seed: int, data_paths: dict[str, str]) -> dict[str, Any]:
    """One quickstart run (train + evaluate) under a kernel set; its test metrics."""
    folder = out / kernels / f"{arch}-s{seed}"
    metrics_file = folder / "eval" / "metrics.json"
    if not metrics_file.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        params = run_params(
            load_params(REPO / "params.yaml"), "quick", [f"arch.name={arch}", f"train.seed={seed}"]
        )
        params["paths"] = run_paths(params["paths"], folder, data_paths)
        (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
        (folder / "commit.txt").write_text(_commit() + "\n", encoding="utf-8")
        env = {**os.environ, **KERNEL_SETS[kernels]}
        for stage in ("train", "evaluate"):
            command = [sys.executable, "-m", f"stages.{stage}", "--params", str(folder / "params.yaml")]
            _run(command + (["--quiet"] if stage == "evaluate" else []), env, folder / "log.txt")
    commit_file = folder / "commit.txt"
    metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
    weights = hashlib.sha256((folder / "model.pt").read_bytes()).hexdigest()[:16]
    test = metrics["test"]
    return {
        "kernels": kernels,
        "arch": arch,
        "seed": seed,
        "route_optimal_rate": test["route_optimal_rate"],
        "route_valid_rate": test["route_valid_rate"],
        "accuracy": test["accuracy"],
        "weights_sha256": weights,
        "commit": commit_file.read_text().strip() if commit_file.is_file() else "unknown",
        "baselines": {
            "monotone_path": test.get("monotone_path", {}).get("route_optimal_rate"),
            "vehicle_blind": test.get("vehicle_blind", {}).get("route_optimal_rate"),
            "copy_input_accuracy": test.get("copy_input", {}).get("accuracy"),
        },
    }


def _commit() -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def markdown(result: dict[str, Any]) -> str:
    """The tables of docs/results.md ("The range to expect"): every run by arch, kernel set and seed, then the
    pooled range per arch (what `hrm quickstart` compares a result with)."""
    runs, seeds = result["runs"], sorted({r["seed"] for r in result["runs"]})
    lines = [
        "| arch | kernel set | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd |",
        "|---|---|" + "---|" * len(seeds) + "---|",
    ]
    for arch in result["archs"]:
        for kernels in result["kernels_run"]:
            mine = {
                r["seed"]: r["route_optimal_rate"]
                for r in runs
                if r["arch"] == arch and r["kernels"] == kernels
            }
            if not mine:
                continue
            cells = [_pct(mine[s]) if s in mine else "" for s in seeds]
            stat = spread(list(mine.values()))
            aten = result["kernel_sets"][kernels].get("aten", "")
            lines.append(
                f"| {arch} | {kernels} (ATen {aten}) | "
                + " | ".join(cells)
                + f" | {_pct(stat['mean'])} ± {_pct(stat['sd'])} |"
            )
    lines += [
        "",
        "| arch | this CPU: runs, min to max, mean ± sd | expected range (`hrm quickstart`'s verdict) |",
    ]
    lines.append("|---|---|---|")
    for arch, wide in sorted(
        result["expected"].items(), key=lambda kv: (kv[0] not in result["archs"], kv[0])
    ):
        stat = result["summary"]["pooled"].get(arch)
        here = "not measured"
        if stat:
            here = f"{stat['n']}: {_pct(stat['min'])} to {_pct(stat['max'])}, {_pct(stat['mean'])} ± {_pct(stat['sd'])}"
        lines.append(
            f"| {arch} | {here} | {_pct(wide['min'])} to {_pct(wide['max'])} ({'; '.join(wide['sources'])}) |"
        )
    return "\n".join(lines)


def readme_table(result: dict[str, Any]) -> str:
    """The README's table: per arch, seed 0 on each measured CPU and the expected range (the verdict's)."""
    cpu = result["machine"]["cpu"]
    lines = [
        "| arch | seed 0, native kernels | expected range (every reference run) |",
        "|---|---|---|",
    ]
    titles = {
        "hrm_v1": "HRM (`hrm_v1`, what `hrm quickstart` runs)",
        "transformer": "same-size transformer",
        "trm": "TRM",
    }
    for arch in sorted(result["expected"], key=lambda a: (a not in result["archs"], a)):
        seeds = [
            r for r in result["runs"] if r["arch"] == arch and r["seed"] == 0 and r["kernels"] == "native"
        ]
        zero = (
            [f"{_pct(seeds[0]['route_optimal_rate'])} ({cpu}, {result['kernel_sets']['native']['aten']})"]
            if seeds
            else []
        )
        other = result.get("earlier", {}).get("ranges", {}).get(arch, {})
        if "seed_0" in other:
            machine = result["earlier"]["machine"]
            zero.append(f"{_pct(other['seed_0'])} ({machine['cpu']}, {machine['aten']})")
        wide = result["expected"][arch]
        lines.append(
            f"| {titles.get(arch, arch)} | {'; '.join(zero) or 'not measured'} | {_pct(wide['min'])} to "
            f"{_pct(wide['max'])} ({wide['n']} runs) |"
        )
    return "\n".join(lines)


def expected_ranges(result: dict[str, Any], earlier: dict[str, Any] | None) -> dict[str, Any]:
    """Per arch: the range a quickstart is compared with, every run here and the earlier CPUs' [min, max]."""
    expected = {}
    for arch in (earlier or {}).get("ranges", {}):
        if (
            arch in result["settings"] and arch not in result["summary"]["pooled"]
        ):  # measured on the earlier CPU only
            other, machine = earlier["ranges"][arch], earlier["machine"]
            expected[arch] = {
                "min": other["min"],
                "max": other["max"],
                "n": other["n"],
                "sources": [f"{other['n']} runs on {machine['cpu']} ({machine['aten']}); none on this CPU"],
            }
    for arch, stat in result["summary"]["pooled"].items():
        kernels = sorted({r["kernels"] for r in result["runs"] if r["arch"] == arch})
        low, high, n = stat["min"], stat["max"], stat["n"]
        sources = [f"{n} runs on {result['machine']['cpu']} ({len(kernels)} kernel sets)"]
        other = (earlier or {}).get("ranges", {}).get(arch)
        if other:
            low, high, n = min(low, other["min"]), max(high, other["max"]), n + other["n"]
            machine = earlier["machine"]
            sources.append(f"{other['n']} runs on {machine['cpu']} ({machine['aten']})")
        expected[arch] = {"min": low, "max": high, "n": n, "sources": sources}
    if earlier:
        result["earlier"] = earlier
    return expected


def spread(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--archs", default="hrm_v1,transformer,trm")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument(
        "--kernels", default=",".join(KERNEL_SETS), help="kernel sets to try (those torch accepts)"
    )
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("/tmp/quick-spread"))
    parser.add_argument("--json", type=Path, default=None, help="write the summary here")
    parser.add_argument("--collect", action="store_true", help="run nothing: summarise the finished runs")
    parser.add_argument(
        "--earlier", type=Path, default=None, help="runs measured on other CPUs (JSON), pooled into the range"
    )
    args = parser.parse_args()

    archs = [a for a in args.archs.split(",") if a]
    probes: dict[str, Any] = {}
    usable: list[str] = []
    for name in [k for k in args.kernels.split(",") if k]:
        probes[name] = {"env": KERNEL_SETS[name], **probe_kernels(name)}
        print(f"kernels {name}: {probes[name]}", flush=True)
        if "error" in probes[name]:
            continue
        same = [u for u in usable if probes[u]["fingerprint"] == probes[name]["fingerprint"]]
        if same:
            probes[name]["same_as"] = same[0]
            print(f"kernels {name}: the same kernels as {same[0]} (not run again)", flush=True)
            continue
        usable.append(name)

    params = run_params(load_params(REPO / "params.yaml"), "quick")
    args.out.mkdir(parents=True, exist_ok=True)
    data_paths = prepare_data(args.out, params)
    # The first arch (the quickstart's) under every kernel set, then the others under the first set, then the
    # rest: a short session gets the table a user needs first.
    order = [(k, archs[0]) for k in usable] + [(usable[0], a) for a in archs[1:]]
    order += [(k, a) for a in archs[1:] for k in usable[1:]]
    jobs = [(k, a, s) for k, a in order for s in range(args.seeds)]

    if args.collect:
        jobs = [j for j in jobs if (args.out / j[0] / f"{j[1]}-s{j[2]}" / "eval" / "metrics.json").is_file()]

    def task(job: tuple[str, str, int]) -> dict[str, Any]:
        record = run_one(args.out, *job, data_paths)
        print(
            f"{job[0]:>8} {job[1]:>12} seed {job[2]}: route optimal {record['route_optimal_rate']:.4f}",
            flush=True,
        )
        return record

    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(task, jobs))

    summary: dict[str, Any] = {"per_kernels": {}, "pooled": {}}
    requested, archs = archs, [a for a in archs if any(r["arch"] == a for r in runs)]
    usable = [k for k in usable if any(r["kernels"] == k for r in runs)]
    for arch in archs:
        mine = [r for r in runs if r["arch"] == arch]
        summary["pooled"][arch] = spread([r["route_optimal_rate"] for r in mine])
        for kernels in usable:
            values = [r["route_optimal_rate"] for r in mine if r["kernels"] == kernels]
            if values:  # not every arch runs under every set
                summary["per_kernels"].setdefault(kernels, {})[arch] = spread(values)
    import torch

    result = {
        "command": "PYTHONPATH=$PWD python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "commit": _commit(),
        "machine": {"cpu": cpu_model(), "torch": torch.__version__, "cores": os.cpu_count()},
        "kernel_sets": probes,
        "archs": archs,
        "kernels_run": usable,
        # what a quickstart must match to be compared with these runs (hrm.quickstart.settings_fingerprint)
        "settings": {
            a: settings_fingerprint(run_params(params, "quick", [f"arch.name={a}"])) for a in requested
        },
        "runs": runs,
        "summary": summary,
    }
    result["expected"] = expected_ranges(
        result, json.loads(args.earlier.read_text()) if args.earlier else None
    )
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n", encoding="utf-8")
    print(markdown(result))
    for arch, s in summary["pooled"].items():
        print(
            f"{arch:>12}: route optimal {100 * s['mean']:.1f}% ± {100 * s['sd']:.1f} [{100 * s['min']:.2f}, {100 * s['max']:.2f}] over {s['n']} runs"
        )


if __name__ == "__main__":
    main()
