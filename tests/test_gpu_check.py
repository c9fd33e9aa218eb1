"""bench/gpu_check.py (the GPU acceptance run) on the CPU: it stops cleanly without CUDA, its parts import,\nfail and record as promised (the doctor part, the compile limit, the deadline), and `--smoke` runs them all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_gpu_check_says_no_cuda_and_writes_nothing(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert "no CUDA" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


def test_gpu_check_parts_import_on_cpu():
    """Every part's imports resolve (a rename in hrm would otherwise surface only on a GPU)."""
    import ast
    import importlib

    path = REPO / "bench" / "gpu_check.py"
    module = load_gpu_check()
    # the parts import inside their functions: resolve every `from X import name` of the file, wherever it is
    imported = 0
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            source = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(source, alias.name):  # a submodule (`from hrm import doctor`)
                    importlib.import_module(f"{node.module}.{alias.name}")
                imported += 1
    assert imported >= 10  # the hrm pieces the parts use, not only the top-level stdlib imports
    assert (module.no_cuda_message() is None) == torch.cuda.is_available()
    settings = module.Settings(**SMOKE)
    speed = module.step_speed_figures({}, settings)
    from hrm.models import ModelConfig
    from hrm.models.flops import segment_flops

    tiny = ModelConfig.from_arch(
        module.run_params(settings)["arch"], seq_len=64, vocab_size=24, num_puzzle_identifiers=5, batch_size=4
    )
    assert speed["seq_len"] == 64 and speed["flops_per_step"] == 4 * segment_flops(tiny).total > 0
    assert speed["flops_formula"].startswith("batch x (per row and segment")


def load_bench(name: str):
    """bench/<name>.py as a module (registered first: its dataclasses look their module up)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_gpu_check():
    return load_bench("gpu_check")


SMOKE = dict(device="cpu", batch=4, steps=2, peak_tflops=None, compile_limit_s=60.0)


def test_doctor_part_fails_when_the_doctor_says_not_ready(monkeypatch):
    from hrm import doctor

    gpu_check = load_gpu_check()
    failing = doctor.Report(
        [doctor.Finding("memory", doctor.FAIL, "DOES NOT FIT"), doctor.Finding("bf16", "ok", "")]
    )
    monkeypatch.setattr(doctor, "load_run_config", lambda *args, **kwargs: None)
    monkeypatch.setattr(doctor, "run_doctor", lambda config, quick=False: failing)
    report: dict = {}
    with pytest.raises(AssertionError, match="NOT READY: memory: DOES NOT FIT"):
        gpu_check.part_doctor(report, gpu_check.Settings(**SMOKE))
    assert report["doctor"]["ok"] is False and len(report["doctor"]["checks"]) == 2  # recorded all the same


def test_a_compile_that_outlasts_its_limit_is_killed_and_the_eager_figures_stay(tmp_path):
    """The compiled timing runs in a child killed at its limit (1 s here: not even torch imports in that)."""
    gpu_check = load_gpu_check()
    settings = gpu_check.Settings(**dict(SMOKE, compile_limit_s=1.0))
    parts = [part for part in gpu_check.parts(settings) if part.name in ("step_eager", "step_compiled")]
    report: dict = {}
    out = tmp_path / "report.json"
    gpu_check.run_parts(parts, report, out, deadline_s=600)
    assert set(report["errors"]) == {"step_compiled"}
    assert "did not finish in 1 s: killed" in report["errors"]["step_compiled"]
    eager = report["step_speed"]["eager"]
    assert eager["step_s"] > 0 and eager["row_segments_per_s"] == pytest.approx(4 / eager["step_s"])
    assert "compiled" not in report["step_speed"] and report["seconds"]["step_compiled"] < 30
    assert json.loads(out.read_text(encoding="utf-8"))["step_speed"]["eager"] == eager


def test_bounded_run_kills_the_whole_process_group(tmp_path):
    """A compile leaves worker processes: the limit must end them too, not only the child."""
    gpu_check = load_gpu_check()
    pid_file = tmp_path / "grandchild.pid"
    code = (
        "import subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
        f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(120)"
    )
    started = time.perf_counter()
    with pytest.raises(TimeoutError, match="did not finish in 3 s"):
        gpu_check.bounded_run([sys.executable, "-c", code], 3.0)
    assert time.perf_counter() - started < 30
    grandchild = Path("/proc") / pid_file.read_text(encoding="utf-8")
    for _ in range(50):  # killed: gone, or a zombie waiting for init to reap it
        if not grandchild.exists() or "State:\tZ" in (grandchild / "status").read_text():
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the grandchild outlived the limit")
    with pytest.raises(RuntimeError, match="exited 3"):
        gpu_check.bounded_run([sys.executable, "-c", "raise SystemExit(3)"], 30.0)


def test_parts_past_the_deadline_are_not_started_and_errors_do_not_stop_the_rest(tmp_path):
    gpu_check = load_gpu_check()
    now = [0.0]
    ran = []

    def part(name: str, takes: float, fails: bool = False):
        def run(report: dict, limit: float) -> None:
            ran.append((name, limit))
            now[0] += takes
            report[name] = "figures"
            if fails:
                raise RuntimeError(f"{name} broke")

        return run

    todo = [
        gpu_check.Part("first", part("first", 50, fails=True), 60),
        gpu_check.Part("second", part("second", 30), 40),
        gpu_check.Part("third", part("third", 10), 30),  # 20 s left of 100: not started
    ]
    report: dict = {}
    gpu_check.run_parts(todo, report, tmp_path / "r.json", deadline_s=100, clock=lambda: now[0])
    assert ran == [("first", 60), ("second", 40)]
    assert report["first"] == "figures" and "RuntimeError: first broke" in report["errors"]["first"]
    assert "not run: 20 s left before the 100 s deadline" in report["errors"]["third"]
    assert report["seconds"] == {"first": 50, "second": 30, "third": 0} and report["total_s"] == 80
    assert json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))["errors"].keys() == {
        "first",
        "third",
    }


def test_plan_against_measured_passes_within_the_tolerance_only():
    from hrm.training.memory import StepMemory, plan

    gpu_check = load_gpu_check()
    memory = StepMemory(fixed=1000, per_example=100, carry_per_row=10, method="test")
    planned = plan(8, 1, None, memory, free_bytes=10_000, total_bytes=10_000)
    assert (planned.micro_batch, planned.peak_bytes) == (8, 1800)
    assert gpu_check.plan_against_measured(planned, 1600)["relative_error"] == 0.125
    assert gpu_check.plan_against_measured(planned, 1600)["ok"] is True
    off = gpu_check.plan_against_measured(planned, 1500)
    assert off["ok"] is False and off["relative_error"] == 0.2
    assert gpu_check.plan_against_measured(plan(8, 1, None, None, None, None), None)["ok"] is None
    with pytest.raises(AssertionError, match="counters did not move"):
        gpu_check.plan_against_measured(planned, 0)
    # the allocator's reservations must fit the plan's budget (90% of the free 10,000 bytes) as well
    assert planned.budget_bytes == 9000
    fits = gpu_check.plan_against_measured(planned, 1600, reserved=9000)
    assert fits["ok"] is True and fits["reserved_within_budget"] is True
    over = gpu_check.plan_against_measured(planned, 1600, reserved=9001)
    assert over["ok"] is False and over["reserved_within_budget"] is False
    assert over["measured_peak_reserved_bytes"] == 9001 and over["relative_error"] == 0.125


def test_memory_probe_is_checked_at_more_rows_on_the_cpu(tmp_path):
    """The plan's line through 1 and 2 rows, checked at PROBE_MORE_ROWS too (the resident-set counter here;
    on CUDA the same points carry max_memory_reserved)."""
    from hrm.training.memory import StepMemory
    from hrm.training.setup import TrainConfig

    gpu_check = load_gpu_check()
    settings = gpu_check.Settings(**SMOKE)
    params = gpu_check.run_params(settings)
    dataset = gpu_check.synthetic_dataset(tmp_path, 3, gpu_check.grid_side(params))
    config = TrainConfig.from_params(params["train"])
    line = StepMemory(fixed=1000, per_example=100, carry_per_row=10, method="test")
    points = gpu_check.probe_more_rows(params["arch"], dataset, config, torch.device("cpu"), line)
    assert [p["rows"] for p in points] == [1, 2, 4, 8]
    assert [p["predicted_bytes"] for p in points] == [1100, 1200, 1400, 1800]
    assert all(p["reserved_bytes"] is None and p["seconds"] > 0 for p in points)


@pytest.mark.slow
def test_smoke_run_of_every_part_on_the_cpu(tmp_path):
    """`gpu_check.py --smoke`: every part's code on the CPU at toy sizes (the GPU run's first-call insurance)."""
    out = tmp_path / "smoke.json"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    report = json.loads(out.read_text(encoding="utf-8"))
    assert done.returncode == 0 and report["errors"] == {}, report["errors"]
    names = ["memory_plan", "doctor", "step_eager", "determinism", "end_to_end", "step_compiled"]
    assert list(report["seconds"]) == names
    assert report["doctor"]["ok"] and report["determinism"]["identical"]
    assert report["step_speed"]["eager"]["step_s"] > 0 and report["step_speed"]["compiled"]["step_s"] > 0
    assert "first step done" in report["step_speed"]["compile_progress"]
    assert report["memory_plan"]["runtime"]["deterministic"] is True
    assert list(report["end_to_end"]["stage_s"]) == list(load_gpu_check().END_TO_END_STAGES)


def test_device_wheels_carry_only_what_the_device_lacks():
    """stdlib, this project and the device's own packages stay behind; the rest at the version tested here."""
    import importlib.metadata

    wheels = load_bench("device_wheels")
    needed = wheels.needed_distributions(
        {"json", "hrm", "stages", "yaml", "torch", "numpy", "dvclive", "jsonschema"}
    )
    assert needed == {
        "dvclive": importlib.metadata.version("dvclive"),
        "jsonschema": importlib.metadata.version("jsonschema"),
    }
    assert wheels.normalized("PyYAML") == wheels.normalized("pyyaml") == "pyyaml"
    assert wheels.normalized("ruamel.yaml") == "ruamel-yaml" and "typing-extensions" in wheels.DEVICE_PACKAGES


def test_device_command_installs_the_carried_wheels_and_writes_under_out():
    wheels = load_bench("device_wheels")
    command = wheels.device_command(".device-wheels")
    assert len(command) <= 2000  # the device tool's limit for one command line
    assert "--no-index --no-deps" in command and "--target /tmp/site .device-wheels/*.whl" in command
    assert (
        "PYTHONPATH=$PWD:/tmp/site" in command and "bench/gpu_check.py --out $OUT/gpu_check.json" in command
    )
    assert command.startswith("set -o pipefail;")  # tee must not hide gpu_check's exit code
    ignored = subprocess.run(["git", "check-ignore", "-q", ".device-wheels/x.whl"], cwd=REPO)
    assert ignored.returncode == 0, "the wheel folder must be git-ignored"


@pytest.mark.parametrize("deterministic", [True, False])
def test_timed_steps_run_under_the_trainers_determinism_setting(monkeypatch, deterministic):
    """The timings use params.yaml's train.deterministic, set by the trainer's own helper, and say so."""
    gpu_check = load_gpu_check()
    settings = gpu_check.Settings(**SMOKE)
    params = gpu_check.run_params(settings)
    params["train"]["deterministic"] = deterministic
    monkeypatch.setattr(gpu_check, "run_params", lambda s: params)
    seen = []
    from hrm.training import step

    real_step = step.train_step

    def recording_step(*args, **kwargs):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return real_step(*args, **kwargs)

    monkeypatch.setattr(step, "train_step", recording_step)
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(not deterministic)
    try:
        figures = gpu_check.time_steps(settings, compiled=False)
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark = before[1]
    assert seen and set(seen) == {deterministic}
    assert figures["runtime"]["deterministic"] is deterministic
    assert figures["runtime"]["cudnn_benchmark"] is (not deterministic)


def test_peak_table_matches_exact_gpu_names_only():
    """MFU is reported against a data-sheet peak only for a GPU named exactly; against the measured matmul
    ceiling always; examples/s counts halted rows, row_segments/s every row of every step."""
    gpu_check = load_gpu_check()
    table = gpu_check.PEAK_BF16_TFLOPS
    assert table["NVIDIA H100 80GB HBM3"] == 989.0 and table["NVIDIA H100 PCIe"] == 756.0
    assert table["NVIDIA H100 NVL"] == 835.0 and table["NVIDIA H200"] == 989.0
    assert "NVIDIA H200 NVL" not in table  # a substring match would have taken the SXM figure
    speed = {"flops_per_step": 2e12, "peak_bf16_tflops": 1000.0, "matmul_ceiling": {"tflops": 800.0}}
    figures = gpu_check.with_mfu({"step_s": 0.01}, speed)
    assert figures["tflops"] == pytest.approx(200.0)
    assert figures["mfu"] == pytest.approx(0.2) and figures["mfu_vs_matmul"] == pytest.approx(0.25)
    unknown = gpu_check.with_mfu({"step_s": 0.01}, dict(speed, peak_bf16_tflops="unknown"))
    assert unknown["mfu"] == "unknown" and unknown["mfu_vs_matmul"] == pytest.approx(0.25)


def test_step_speed_measures_the_matmul_ceiling_and_counts_finished_examples(monkeypatch):
    gpu_check = load_gpu_check()
    settings = gpu_check.Settings(**SMOKE)
    speed = gpu_check.step_speed_figures({}, settings)
    ceiling = speed["matmul_ceiling"]
    assert ceiling["side"] == gpu_check.MATMUL_SMOKE_SIDE and ceiling["tflops"] > 0
    assert speed["peak_bf16_tflops"] == "unknown"  # "cpu (smoke run)" is no GPU of the table
    from hrm.training import step

    real_step = step.train_step
    counts = iter([1.0, 0.0, 3.0, 2.0])  # warm-up (2 steps), then the 2 timed ones

    def step_with_count(*args, **kwargs):
        result = real_step(*args, **kwargs)
        result.metrics["count"] = next(counts)
        return result

    monkeypatch.setattr(step, "train_step", step_with_count)
    figures = gpu_check.time_steps(settings, compiled=False)
    assert figures["examples_finished"] == 5.0
    timed_s = figures["step_s"] * settings.steps
    assert figures["examples_per_s"] == pytest.approx(5.0 / timed_s)
    assert figures["row_segments_per_s"] == pytest.approx(settings.batch / figures["step_s"])


def test_the_compiled_part_runs_last_and_fills_the_time_left(tmp_path):
    """The compile's limit is sized to fit: whatever the parts before it left before the deadline."""
    gpu_check = load_gpu_check()
    assert [p.name for p in gpu_check.parts(gpu_check.Settings(**SMOKE))][-1] == "step_compiled"
    now, limits = [0.0], []

    def run(takes: float):
        def part(report: dict, limit: float) -> None:
            limits.append(limit)
            now[0] += takes

        return part

    todo = [
        gpu_check.Part("first", run(30), 40),
        gpu_check.Part("compiled", run(5), 60, fill=True),
    ]
    gpu_check.run_parts(todo, {}, tmp_path / "r.json", deadline_s=100, clock=lambda: now[0])
    assert limits == [40, 70]
    report: dict = {}
    todo = [gpu_check.Part("first", run(50), 60), gpu_check.Part("compiled", run(5), 60, fill=True)]
    gpu_check.run_parts(todo, report, tmp_path / "r.json", deadline_s=100, clock=lambda: now[0])
    assert "not run: 50 s left" in report["errors"]["compiled"]


def test_a_killed_compile_records_how_far_it_got(monkeypatch, tmp_path):
    gpu_check = load_gpu_check()
    seen = {}

    def killed(command, limit_s, env=None):
        seen["limit"] = limit_s
        stamps = Path(command[command.index("--progress") + 1])
        stamps.write_text(json.dumps({"started": 0.5, "state built, first (compiling) step started": 3.0}))
        raise TimeoutError(f"did not finish in {limit_s:.0f} s: killed")

    monkeypatch.setattr(gpu_check, "bounded_run", killed)
    report: dict = {"step_speed": {}}
    capped = gpu_check.Settings(**dict(SMOKE, compile_limit_s=50.0))
    with pytest.raises(TimeoutError):
        gpu_check.part_step_compiled(report, capped, 200.0)
    assert seen["limit"] == 50.0 and report["step_speed"]["compile_limit_s"] == 50.0
    assert report["step_speed"]["compile_progress"]["state built, first (compiling) step started"] == 3.0
    uncapped = gpu_check.Settings(**dict(SMOKE, compile_limit_s=None))
    with pytest.raises(TimeoutError):
        gpu_check.part_step_compiled(report, uncapped, 200.0)
    assert seen["limit"] == 200.0
    assert gpu_check.read_progress(tmp_path / "absent.json") == {}


def test_the_documented_device_commands_are_the_scripts_own():
    """docs/gpu_check.md gives the device calls verbatim as device_wheels makes them (one source), each within
    the tool's 2,000 characters and with pipefail so that tee keeps the script's exit code."""
    wheels = load_bench("device_wheels")
    docs = (REPO / "docs" / "gpu_check.md").read_text(encoding="utf-8")
    for command in (wheels.device_command(".device-wheels"), wheels.budget_command(".device-wheels")):
        assert command in docs and len(command) <= 2000 and command.startswith("set -o pipefail;")
    assert "--out $OUT/gpu-budget 2>&1 | tee $OUT/gpu-budget.log" in wheels.budget_command(".w")
    rehearsed = wheels.device_command(".device-wheels", site="/scratch/site", check_args="--smoke")
    assert rehearsed == wheels.device_command(".device-wheels").replace("/tmp/site", "/scratch/site").replace(
        "gpu_check.py --out", "gpu_check.py --smoke --out"
    )


def test_rehearsal_fails_on_a_version_clash_or_a_shadowed_image_package_and_names_it(tmp_path):
    """bench/device_rehearsal.py's verdict on pip check's output (the device installs with --no-deps)."""
    rehearsal = load_bench("device_rehearsal")
    carried = {"dvc": "3.67.1", "jsonschema": "4.26.0", "pydantic": "2.13.4", "tqdm": "4.0.0"}
    image = {"pydantic": "2.14.4", "tqdm": "4.67.1", "numpy": "2.5.2"}
    check = (
        "dvc 3.67.1 requires celery, which is not installed.\n"
        "jsonschema 4.26.0 has requirement attrs>=22.2.0, but you have attrs 21.4.0.\n"
        "torchvision 0.26.0 requires pillow, which is not installed.\n"  # the image's own: not ours
    )
    problems, notes = rehearsal.clashes(check, carried, image)
    assert problems == [
        "jsonschema 4.26.0 has requirement attrs>=22.2.0, but you have attrs 21.4.0.",
        "carried tqdm 4.0.0 shadows the image's tqdm 4.67.1",  # tqdm is on the device's list; pydantic is not
    ]
    assert notes == ["dvc 3.67.1 requires celery, which is not installed."]
    assert rehearsal.clashes("No broken requirements found.\n", carried, {}) == ([], [])
    log = "ModuleNotFoundError: No module named 'jsonschema'\n... No module named 'dvclive.live'"
    assert rehearsal.missing_modules(log) == ["dvclive.live", "jsonschema"]
    (tmp_path / "ruamel_yaml-0.19.1-py3-none-any.whl").write_bytes(b"")
    assert rehearsal.wheel_distributions(tmp_path) == {"ruamel-yaml": "0.19.1"}
    assert rehearsal.DEVICE_VERSIONS["torch"] == "2.11.0" and rehearsal.DEVICE_VERSIONS["numpy"] == "2.5.2"
