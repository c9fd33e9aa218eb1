"""`hrm doctor` on the CPU: its report, its exit code, and that each check can fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from hrm import doctor
from hrm.cli import app

REPO = Path(__file__).resolve().parents[1]
CHECK_NAMES = [
    "environment",
    "device",
    "compile",
    "sdpa_backends",
    "sdpa_numerics",
    "bf16",
    "determinism",
    "memory",
    "gpu_plans",
]
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_params(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repo's params.yaml with a small grid and model, so every check runs in seconds on the CPU."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["generate"].update(rows=6, cols=6)
    params["arch"].update(
        hidden_size=64, num_heads=2, H_layers=1, L_layers=1, puzzle_emb_ndim=64, halt_max_steps=2
    )
    params["train"].update(global_batch_size=8, device="cpu")
    path = tmp_path_factory.mktemp("doctor") / "params.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def passing_report(tiny_params: Path) -> tuple[int, dict]:
    return run_json("--params", str(tiny_params), "--quick")


def run_json(*args: str) -> tuple[int, dict]:
    result = runner.invoke(app, ["doctor", "--json", *args])
    return result.exit_code, json.loads(result.stdout)


def checks_by_name(report: dict) -> dict[str, dict]:
    return {check["name"]: check for check in report["checks"]}


def test_doctor_passes_on_cpu_and_reports_every_field(passing_report):
    code, report = passing_report
    checks = checks_by_name(report)
    assert code == 0 and report["ok"] is True, [c for c in report["checks"] if c["status"] == "fail"]
    assert list(checks) == CHECK_NAMES
    assert checks["environment"]["data"]["torch"] == torch.__version__
    assert checks["device"]["data"]["device"] == "cpu"
    assert checks["sdpa_backends"]["data"]["runs"]["math"] is True
    numerics = checks["sdpa_numerics"]["data"]
    assert 0 <= numerics["max_abs_diff"] <= numerics["tolerance"] == doctor.SDPA_TOLERANCE["float32"]
    assert checks["bf16"]["data"]["forward_dtype"] == "float32"
    assert checks["determinism"]["data"]["identical"] is True
    memory = checks["memory"]["data"]
    assert memory["seq_len"] == 36 and memory["batch"] == 8
    assert memory["per_example_bytes"] > 0 and memory["fixed_bytes"] > 0
    assert memory["needed_bytes"] == memory["fixed_bytes"] + 8 * memory["per_example_bytes"]
    assert memory["largest_batch"] >= 8
    assert "traced on the meta device" in memory["method"]


def test_table_output_names_every_check(tiny_params):
    result = runner.invoke(app, ["doctor", "--params", str(tiny_params), "--quick"])
    assert result.exit_code == 0, result.stdout
    for name in CHECK_NAMES:
        assert name in result.stdout
    assert "READY" in result.stdout and "NOT READY" not in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda_fails_clearly(tiny_params):
    code, report = run_json("--params", str(tiny_params), "--quick", "--device", "cuda")
    checks = checks_by_name(report)
    assert code == 1 and report["ok"] is False
    assert checks["device"]["status"] == "fail"
    assert "CUDA is not available" in checks["device"]["detail"]
    assert all(checks[name]["status"] == "skip" for name in CHECK_NAMES[2:])


def test_batch_that_does_not_fit_fails(tiny_params, passing_report):
    config = doctor.load_run_config(tiny_params, overrides=["train.global_batch_size=100000000"])
    memory = doctor.check_memory(config, "cpu", quick=True)
    assert memory.status == "fail"
    assert "DOES NOT FIT" in memory.detail and memory.data["largest_batch"] < 100_000_000
    # the same figures as the passing run: only the batch changed
    passing = checks_by_name(passing_report[1])["memory"]["data"]
    assert memory.data["per_example_bytes"] == passing["per_example_bytes"]
    assert memory.data["largest_batch"] == pytest.approx(passing["largest_batch"], rel=0.05)


def test_world_size_divides_the_global_batch(tiny_params):
    config = doctor.load_run_config(tiny_params, world_size=4)
    assert config.per_device_batch == 2
    assert doctor.check_memory(config, "cpu", quick=True).data["batch"] == 2


def test_seq_len_comes_from_the_converted_data_when_present(tiny_params):
    dataset = tiny_params.parent / "data" / "logistics-routing-1k" / "train" / "dataset.json"
    dataset.parent.mkdir(parents=True)
    dataset.write_text(json.dumps({"seq_len": 25}), encoding="utf-8")
    config = doctor.load_run_config(tiny_params, overrides=["paths.hrm=data/logistics-routing-1k"])
    assert config.seq_len == 25 and "dataset.json" in config.seq_len_source


def test_a_profile_that_changes_the_data_reads_its_own_settings_not_the_converted_data(tmp_path):
    """`--profile quick` runs on 8x8 maps of 960 bases: the paper data converted on disk is another run's."""
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    hrm_dir = yaml.safe_load(path.read_text(encoding="utf-8"))["paths"]["hrm"]
    dataset = tmp_path / hrm_dir / "train" / "dataset.json"
    dataset.parent.mkdir(parents=True)
    dataset.write_text(json.dumps({"seq_len": 25}), encoding="utf-8")
    assert doctor.load_run_config(path).seq_len == 25
    quick = doctor.load_run_config(path, profile="quick")
    assert quick.seq_len == 64 and "generate.rows" in quick.seq_len_source
    assert doctor.planned_step_count(quick) == (2880, "epochs 24 x 960 groups")


def test_sdpa_mismatch_fails(tiny_params, monkeypatch):
    def wrong_attention(query, key, value, **kwargs):  # a broken kernel: attends uniformly
        return value.mean(dim=-2, keepdim=True).expand_as(value)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", wrong_attention)
    config = doctor.load_run_config(tiny_params)
    backends, numerics = doctor.check_sdpa(config, "cpu", quick=True)
    assert numerics.status == "fail" and "OUT OF TOLERANCE" in numerics.detail


def test_determinism_check_fails_on_differing_gradients(tiny_params):
    calls = []

    def drifting_step(seed: int) -> dict[str, torch.Tensor]:
        calls.append(seed)
        return {"w": torch.full((3,), float(len(calls)))}

    strict = doctor.load_run_config(tiny_params)
    assert strict.deterministic is True
    check = doctor.check_determinism(strict, "cpu", quick=True, step=drifting_step)
    assert check.status == "fail" and check.data["max_abs_diff"] == 1.0
    relaxed = doctor.load_run_config(tiny_params, overrides=["train.deterministic=false"])
    assert doctor.check_determinism(relaxed, "cpu", quick=True, step=drifting_step).status == "warn"


def test_traced_memory_is_close_to_a_real_cpu_step(tiny_params):
    """The meta-device trace (used for the estimate) against the same count on a real CPU step."""
    config = doctor.load_run_config(tiny_params)
    work = doctor.workload(config, quick=False)
    per_example = {}
    for device in ("cpu", "meta"):
        one, _ = doctor.saved_step_bytes(work, device, "float32", 1, 0, fused_attention=True)
        two, _ = doctor.saved_step_bytes(work, device, "float32", 2, 0, fused_attention=True)
        per_example[device] = two - one
    assert per_example["cpu"] > 0
    assert abs(per_example["meta"] - per_example["cpu"]) <= 0.25 * per_example["cpu"], per_example


def test_user_errors_exit_1_without_traceback(tmp_path, tiny_params):
    result = runner.invoke(app, ["doctor", "--params", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 1 and "file not found" in result.stderr and "Traceback" not in result.output
    result = runner.invoke(app, ["doctor", "--params", str(tiny_params), "--set", "train.global_batch_size"])
    assert result.exit_code == 1 and "expected KEY=VALUE" in result.stderr
    result = runner.invoke(app, ["doctor", "--params", str(tiny_params), "--profile", "nope"])
    assert result.exit_code == 1 and "profiles.nope" in result.stderr
    result = runner.invoke(app, ["doctor", "--params", str(tiny_params), "--world-size", "3"])
    assert result.exit_code == 1 and "not a multiple of the 3 processes" in result.stderr
    result = runner.invoke(app, ["doctor", "--params", str(tiny_params), "-S", "train.device=gpu"])
    assert result.exit_code == 1 and "train.device must be one of" in result.stderr


def test_pyproject_script_points_at_this_app():
    import tomllib

    import typer

    script = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]["hrm"]
    assert script == "hrm.cli:app" and isinstance(app, typer.Typer)
    assert "doctor" in runner.invoke(app, ["--help"]).stdout


def test_gpu_plans_cover_every_size_with_an_estimate(tiny_params, passing_report):
    plans = checks_by_name(passing_report[1])["gpu_plans"]
    assert plans["status"] == "ok" and "ESTIMATE" in plans["detail"] and "MFU" in plans["detail"]
    assert [row["gib"] for row in plans["data"]["rows"]] == [8, 12, 16, 24, 40, 48, 80, 141]
    assert plans["data"]["flops_per_step"] > 0 and plans["data"]["formula"] in plans["detail"]
    micro = [row["micro_batch"] for row in plans["data"]["rows"]]
    assert micro == sorted(micro) and micro[0] >= 1  # more memory never means a smaller micro-batch


def test_flops_formula_matches_a_hand_count():
    from hrm.models.layers import swiglu_width

    arch = {
        "hidden_size": 64,
        "H_cycles": 2,
        "L_cycles": 3,
        "H_layers": 1,
        "L_layers": 2,
        "puzzle_emb_ndim": 64,
    }
    flops, _ = doctor.step_flops(arch, seq_len=15, vocab_size=10, rows=2)
    tokens, inner = 16, swiglu_width(64, 4.0)
    block = 2 * (4 * 64 * 64 + 3 * 64 * inner) + 4 * tokens * 64
    blocks = 2 * (2 * (3 * 2 + 1)) + 2 * (2 + 1)  # main + target-Q forwards, backward of the last L and H
    assert flops == 2 * tokens * (blocks * block + 6 * 64 * 10)


def test_batch_too_big_for_one_step_runs_as_micro_batches(tiny_params, passing_report):
    largest = checks_by_name(passing_report[1])["memory"]["data"]["largest_batch"]
    big = 4 * largest  # a multiple of 4: micro-batches divide it
    config = doctor.load_run_config(tiny_params, overrides=[f"train.global_batch_size={big}"])
    memory = doctor.check_memory(config, "cpu", quick=True)
    assert memory.status == "ok", memory.detail
    assert "runs as micro-batches of" in memory.detail and memory.data["micro_batch"] < big
    fixed = doctor.load_run_config(
        tiny_params, overrides=[f"train.global_batch_size={big}", f"train.micro_batch_size={big // 2}"]
    )
    refused = doctor.check_memory(fixed, "cpu", quick=True)
    assert refused.status == "fail" and "above the largest that fits" in refused.detail


def test_cuda_memory_path_runs_the_trainers_step(tiny_params, monkeypatch):
    """The CUDA measurement's wiring, on the CPU with torch.cuda's memory counters faked: the trainer's step
    (both optimizers) runs at 1 and 2 rows and the peaks become fixed + per-example bytes."""
    import torch

    import hrm.training.step as step_module

    rows_seen, peaks = [], iter([1300, 1000, 1600])  # the first: the probe's warm-up step, dropped
    real_step = step_module.train_step

    def recording_step(state, batch, **kwargs):
        rows_seen.append(batch["inputs"].shape[0])
        result = real_step(state, batch, **kwargs)
        assert all(o.state or o.__class__.__name__ == "SparseSignSGD" for o in state.optimizers)
        return result

    monkeypatch.setattr(step_module, "train_step", recording_step)
    for name in ("empty_cache", "synchronize", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a, **k: 0)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: next(peaks))
    config = doctor.load_run_config(tiny_params)
    measured = doctor.measured_trainer_step(config, doctor.workload(config, quick=False), "cpu", "float32")
    assert rows_seen == [1, 1, 2]  # a warm-up step (not measured), then the two probes
    assert (measured.fixed, measured.per_example) == (400, 600) and measured.carry_per_row > 0


def test_visible_nvidia_gpu_reads_device_nodes_then_the_driver(tmp_path):
    dev, proc = tmp_path / "dev", tmp_path / "proc"
    dev.mkdir()
    (dev / "nvidiactl").touch()  # the control node alone is not a GPU
    assert doctor.visible_nvidia_gpu(dev, proc) is None
    proc.mkdir()
    (proc / "version").write_text("NVRM version: 570", encoding="utf-8")
    assert doctor.visible_nvidia_gpu(dev, proc) == (proc / "version").as_posix()
    (dev / "nvidia0").touch()
    assert doctor.visible_nvidia_gpu(dev, proc) == (dev / "nvidia0").as_posix()


def test_gpu_given_to_a_cpu_build_of_torch_is_named(tiny_params, monkeypatch):
    """`docker run --gpus all` on the CPU image: the device check says the GPU is there but unusable."""
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(doctor, "visible_nvidia_gpu", lambda: "/dev/nvidia0")
    check, device = doctor.check_device(doctor.load_run_config(tiny_params, device="cpu"))
    assert device == "cpu" and check.status == doctor.WARN
    assert "/dev/nvidia0" in check.detail and "CPU-only build" in check.detail
    check, device = doctor.check_device(doctor.load_run_config(tiny_params, device="cuda"))
    assert device is None and check.status == doctor.FAIL and "/dev/nvidia0" in check.detail
    monkeypatch.setattr(doctor, "visible_nvidia_gpu", lambda: None)
    check, _ = doctor.check_device(doctor.load_run_config(tiny_params, device="cpu"))
    assert check.status == doctor.OK and "nvidia" not in check.detail
