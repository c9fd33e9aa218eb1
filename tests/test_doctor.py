"""`hrm doctor` on the CPU: its report, its exit code, and that each check can fail."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

import hrm.training.memory as memory_module
from hrm import doctor, planning
from hrm.cli import app
from hrm.training import trace
from tests.conftest import REPO

CHECK_NAMES = [
    "environment",
    "device",
    "compile",
    "sdpa_backends",
    "sdpa_numerics",
    "bf16",
    "determinism",
    "memory",
    "time_here",
    "gpu_plans",
]
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_params(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repo's params.yaml with a small grid and model, so every check runs in seconds on the CPU."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["generate"].update(rows=6, cols=6, min_route_length=6)  # a run generate could make (check_rules)
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


def write_dataset_json(folder: Path, seq_len: int) -> None:
    """A complete train/dataset.json (as convert writes it) with this seq_len."""
    import numpy as np

    from hrm.data.conversion.convert import hrm_metadata

    arrays = {
        "inputs": np.zeros((4, seq_len)),
        "puzzle_identifiers": np.arange(1, 5),
        "group_indices": np.array([0, 4]),
    }
    folder.mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps(hrm_metadata(arrays, 24, 5)), encoding="utf-8")


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
    assert (memory["micro_batch"], memory["accumulation"]) == (8, 1)  # fits: the whole batch at once
    assert memory["peak_bytes"] <= memory["budget_bytes"]
    assert "traced on the meta device" in memory["method"]  # --quick: the trace, not the trainer's probe
    assert "ESTIMATE" in checks["memory"]["detail"] and "ESTIMATE" in checks["time_here"]["detail"]
    assert checks["time_here"]["data"]["total_seconds"] > 0


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
    largest = [
        "generate.rows=64",
        "generate.cols=64",
        "train.global_batch_size=1048576",
    ]  # the schema's bounds
    config = doctor.load_run_config(tiny_params, overrides=largest)
    memory, plan = doctor.check_memory(config, "cpu", quick=True)
    assert memory.status == "fail" and plan is None
    assert (
        "DOES NOT FIT" in memory.detail
        and "not even a micro-batch of 1 fits: a step needs ~" in memory.detail
    )


def test_world_size_divides_the_global_batch(tiny_params):
    config = doctor.load_run_config(tiny_params, world_size=4)
    assert config.per_device_batch == 2
    assert doctor.check_memory(config, "cpu", quick=True)[0].data["batch"] == 2


def test_seq_len_comes_from_the_converted_data_when_present(tiny_params, tmp_path):
    params = tmp_path / "params.yaml"  # its own folder: the module's other tests see no converted data
    params.write_bytes(tiny_params.read_bytes())
    write_dataset_json(tmp_path / "data" / "logistics-routing-1k" / "train", seq_len=25)
    config = doctor.load_run_config(params, overrides=["paths.hrm=data/logistics-routing-1k"])
    assert config.seq_len == 25 and "dataset.json" in config.seq_len_source
    assert config.metadata.num_puzzle_identifiers == 5 and config.metadata.total_groups == 1
    (tmp_path / "data" / "logistics-routing-1k" / "train" / "dataset.json").write_text('{"seq_len": 25}')
    with pytest.raises(doctor.UserError, match="dataset.json: field 'pad_id' is missing"):
        doctor.load_run_config(params, overrides=["paths.hrm=data/logistics-routing-1k"])


def test_a_profile_that_changes_the_data_reads_its_own_settings_not_the_converted_data(tmp_path):
    """`--profile quick` runs on 8x8 maps of 960 bases: the paper data converted on disk is another run's."""
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    hrm_dir = yaml.safe_load(path.read_text(encoding="utf-8"))["paths"]["hrm"]
    write_dataset_json(tmp_path / hrm_dir / "train", seq_len=25)
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
        one, _ = trace.saved_step_bytes(work, device, "float32", 1, 0, fused_attention=True)
        two, _ = trace.saved_step_bytes(work, device, "float32", 2, 0, fused_attention=True)
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


def test_gpu_plans_count_the_flops_of_the_chosen_architecture(tiny_params):
    """FLOPs per step are hrm.models.flops' for the arch that runs (TRM's recursion is not HRM's layers)."""
    from hrm.models import ModelConfig
    from hrm.models.flops import segment_flops

    for arch in ("hrm_v1", "trm", "transformer"):
        config = doctor.load_run_config(tiny_params, overrides=[f"arch.name={arch}"])
        plans = doctor.check_gpu_plans(config)
        meta = config.metadata
        sizes = dict(seq_len=meta.seq_len, vocab_size=meta.vocab_size, batch_size=1)
        model = ModelConfig.from_arch(
            dict(config.arch, forward_dtype="bfloat16"),
            **sizes,
            num_puzzle_identifiers=meta.num_puzzle_identifiers,
        )
        assert plans.data["flops_per_step"] == 8 * segment_flops(model).total, arch
    hrm, trm = (doctor.load_run_config(tiny_params, overrides=[f"arch.name={a}"]) for a in ("hrm_v1", "trm"))
    assert (
        doctor.check_gpu_plans(hrm).data["flops_per_step"]
        != doctor.check_gpu_plans(trm).data["flops_per_step"]
    )


def test_batch_too_big_for_one_step_runs_as_micro_batches(tiny_params, passing_report, tmp_path, monkeypatch):
    from test_training_memory import mock_mem_available

    figures = checks_by_name(passing_report[1])["memory"]["data"]
    fixed, per_example, carry = (
        figures[k] for k in ("fixed_bytes", "per_example_bytes", "carry_bytes_per_row")
    )
    assert per_example > 4 * carry  # so that 24 rows' worth of RAM fits 16 rows but not 32
    mock_mem_available(monkeypatch, tmp_path, int((fixed + 24 * per_example + 64 * carry) / 0.9))
    config = doctor.load_run_config(tiny_params, overrides=["train.global_batch_size=64"])
    memory, plan = doctor.check_memory(config, "cpu", quick=True)
    assert memory.status == "ok", memory.detail
    assert (plan.micro_batch, plan.accumulation) == (16, 4) and memory.data["accumulation"] == 4
    assert plan.describe() in memory.detail
    fixed_micro = doctor.load_run_config(
        tiny_params, overrides=["train.global_batch_size=64", "train.micro_batch_size=32"]
    )
    refused, _ = doctor.check_memory(fixed_micro, "cpu", quick=True)
    assert refused.status == "fail" and "the largest that fits is 16" in refused.detail


def test_cuda_memory_is_the_trainers_plan(tiny_params, monkeypatch):
    """On CUDA the doctor asks the trainer's plan (hrm.training.memory.plan_micro_batch: its state builder, EMA
    included, measured at 1 and 2 rows) on a stand-in split of the configured shapes, and reports its figures;
    the plan's refusal is the doctor's FAIL. CPU here: the plan is recorded, not run."""
    import hrm.training.memory as memory

    calls = []
    measured = memory.StepMemory(fixed=1000, per_example=600, carry_per_row=8, method="measured: test")

    def recording_plan(arch, metadata, config, world_size, device, configured_micro, dataset):
        calls.append((metadata.seq_len, config.ema, world_size, device.type, configured_micro))
        assert memory.first_batch(dataset, 2)["inputs"].shape == (2, metadata.seq_len)
        return memory.plan(config.global_batch_size, world_size, configured_micro, measured, 10**9, 10**9)

    monkeypatch.setattr(memory, "plan_micro_batch", recording_plan)
    config = doctor.load_run_config(tiny_params, overrides=["train.ema=true"])
    check, _ = doctor.check_memory(config, "cuda", quick=False)
    assert calls == [(config.seq_len, True, 1, "cuda", None)]
    assert check.status == "ok" and check.data["per_example_bytes"] == 600 and check.data["micro_batch"] == 8
    assert "the trainer's plan: global 8 = 1 process x 1 accumulation x 8" in check.detail
    assert "measured: test" in check.detail

    def refusing_plan(*args, **kwargs):
        raise memory.UserError("not even a micro-batch of 1 fits: a step needs ~9 GiB")

    monkeypatch.setattr(memory, "plan_micro_batch", refusing_plan)
    refused, _ = doctor.check_memory(config, "cuda", quick=False)
    assert refused.status == "fail" and "DOES NOT FIT" in refused.detail and "needs ~9 GiB" in refused.detail


def test_cuda_probe_runs_the_trainers_step(tiny_params, monkeypatch):
    """The CUDA measurement the plan makes (hrm.training.memory.measure_cuda_step), on the CPU with torch.cuda's
    memory counters faked: the trainer's step (both optimizers) runs at 1 and 2 rows and the peaks become fixed +
    per-example bytes. Kept from the doctor's own copy of the probe, which now asks the plan."""
    import torch

    import hrm.training.step as step_module
    from hrm.training.memory import measure_cuda_step
    from hrm.training.state import TrainState, build_optimizers

    rows_seen, peaks = [], iter([1300, 1000, 1600])  # the first: the probe's warm-up step, dropped
    real_step = step_module.train_step

    def recording_step(state, batch, **kwargs):
        rows_seen.append(batch["inputs"].shape[0])
        result = real_step(state, batch, **kwargs)
        assert all(o.state or o.__class__.__name__ == "SparseSignSGD" for o in state.optimizers.values())
        return result

    monkeypatch.setattr(step_module, "train_step", recording_step)
    for name in ("empty_cache", "synchronize", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a, **k: 0)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: next(peaks))
    config = doctor.load_run_config(tiny_params)
    work = doctor.workload(config, quick=False)

    def make_state(rows: int) -> TrainState:
        head = doctor.build(work, rows, "cpu", "float32", 0)
        optimizers, base_lrs = build_optimizers(head, config.train)
        return TrainState(head, head, optimizers, base_lrs, torch.Generator().manual_seed(0))

    batch = doctor.random_batch(work, 2, "cpu", 0)
    measured = measure_cuda_step(make_state, batch, torch.device("cpu"), config.train.global_batch_size)
    assert rows_seen == [1, 1, 2]  # a warm-up step (not measured), then the two probes
    assert (measured.fixed, measured.per_example) == (400, 600) and measured.carry_per_row > 0


def test_traced_memory_counts_the_ema_copy(tiny_params):
    """train.ema keeps a full copy of the weights: the estimate must hold one more parameter copy."""
    plain, _ = doctor.check_memory(doctor.load_run_config(tiny_params), "cpu", quick=True)
    ema, _ = doctor.check_memory(
        doctor.load_run_config(tiny_params, overrides=["train.ema=true"]), "cpu", quick=True
    )
    params_bytes = sum(
        p.numel() * p.element_size()
        for p in doctor.build(
            doctor.workload(doctor.load_run_config(tiny_params), False), 1, "meta", "float32", 0
        ).parameters()
    )
    assert ema.data["fixed_bytes"] - plain.data["fixed_bytes"] == params_bytes > 0
    assert ema.data["per_example_bytes"] == plain.data["per_example_bytes"] and "EMA copy" in ema.detail


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


def test_non_finite_gradients_are_named_not_read_as_nondeterminism(tiny_params):
    """NaN != NaN: identical NaN gradients must fail as non-finite, naming the tensor and the values."""

    def nan_step(seed: int) -> dict[str, torch.Tensor]:
        return {"w": torch.tensor([0.5, float("nan"), float("inf")]), "b": torch.ones(2)}

    for overrides in ([], ["train.deterministic=false"]):
        config = doctor.load_run_config(tiny_params, overrides=overrides)
        check = doctor.check_determinism(config, "cpu", quick=True, step=nan_step)
        assert check.status == "fail" and check.data["finite"] is False, check.detail
        assert "non-finite gradients" in check.detail and "w: 2 of 3 NaN/inf" in check.detail
        assert "differ" not in check.detail and "b:" not in check.detail


def test_bf16_check_ignores_emulation(tiny_params, monkeypatch):
    """A pre-Ampere GPU 'supports' bf16 by emulation only: arch.forward_dtype bfloat16 must fail there."""

    def emulating(including_emulation: bool = True) -> bool:
        return including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", emulating)
    config = doctor.load_run_config(tiny_params, overrides=["arch.forward_dtype=bfloat16"])
    check = doctor.check_bf16(config, "cuda")
    assert check.status == "fail" and "no bf16 in hardware" in check.detail, check.detail
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)  # a torch without the keyword
    for capability, status in (((7, 5), "fail"), ((8, 0), "ok")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert doctor.check_bf16(config, "cuda").status == status, capability
    float32 = doctor.load_run_config(tiny_params, overrides=["arch.forward_dtype=float32"])
    assert doctor.check_bf16(float32, "cuda").status == "ok"


def _compile_check_in_a_subprocess(tiny_params: Path, tmp_path: Path, **env: str) -> dict:
    """check_compile with train.compile: true in a fresh process and Inductor cache (no cached build)."""
    import os
    import subprocess
    import sys

    code = (
        "import json, sys; from hrm import doctor; "
        "config = doctor.load_run_config(sys.argv[1], overrides=['train.compile=true']); "
        "check = doctor.check_compile(config, 'cpu'); print(json.dumps([check.status, check.detail]))"
    )
    cache = tmp_path / "inductor"
    environment = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache), OMP_NUM_THREADS="1", **env)
    done = subprocess.run(
        [sys.executable, "-c", code, str(tiny_params)], capture_output=True, text=True, env=environment
    )
    assert done.returncode == 0, done.stderr[-3000:]
    status, detail = json.loads(done.stdout.splitlines()[-1])
    return {"status": status, "detail": detail}


def test_compile_check_fails_without_a_working_compiler(tiny_params, tmp_path):
    """Importing Triton is not compiling: with no C++ compiler the compile check must fail and say why."""
    check = _compile_check_in_a_subprocess(tiny_params, tmp_path, CXX="/nonexistent/g++")
    assert check["status"] == "fail", check
    assert "torch.compile failed on cpu" in check["detail"] and "C compiler" in check["detail"]
    assert "/nonexistent/g++" in check["detail"]


@pytest.mark.slow
def test_compile_check_compiles_and_runs_here(tiny_params, tmp_path):
    check = _compile_check_in_a_subprocess(tiny_params, tmp_path)
    assert check["status"] == "ok" and "a compiled function ran on cpu" in check["detail"], check


def test_compile_check_reports_a_wrong_compiled_result(tiny_params, monkeypatch):
    def miscompiled(fn, **kwargs):
        return lambda x: fn(x) + 1.0

    monkeypatch.setattr(torch, "compile", miscompiled)
    config = doctor.load_run_config(tiny_params, overrides=["train.compile=true"])
    check = doctor.check_compile(config, "cpu")
    assert check.status == "fail" and "the compiled function gave" in check.detail
    assert doctor.check_compile(doctor.load_run_config(tiny_params), "cpu").status == "ok"  # compile: false


# ------------------------------------------------------------------------- the trainer's plan, the time here


@pytest.mark.parametrize("fits", [True, False], ids=["whole-batch-fits", "micro-batches"])
def test_doctor_shows_the_trainers_plan_on_the_cpu(fits, tiny_run_data, tmp_path, monkeypatch, one_thread):
    """The doctor's memory line is the plan train prints (the same plan_micro_batch, same numbers): it used to
    re-derive the fit from its own trace and say micro-batches where the trainer ran the whole batch at once."""
    from test_training_memory import FakeResidentSet, mock_mem_available, ram_for_micro_batch
    from train_helpers import tiny_params as train_params

    from hrm.training import loop

    fake = FakeResidentSet()
    fake.install(monkeypatch)
    mock_mem_available(monkeypatch, tmp_path, 10**12 if fits else ram_for_micro_batch(2, fake))
    params = train_params(tiny_run_data, tmp_path, global_batch_size=8, epochs=2, eval_interval=2)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    check, plan = doctor.check_memory(doctor.load_run_config(path), "cpu", quick=False)
    printed = []
    monkeypatch.setattr("builtins.print", lambda *args, **kwargs: printed.append(" ".join(map(str, args))))
    loop.train(params)
    trainer = next(line for line in printed if line.startswith("memory plan: "))
    assert trainer == f"memory plan: {plan.describe()}" and plan.describe() in check.detail
    assert (plan.micro_batch, plan.accumulation) == ((8, 1) if fits else (2, 4))
    assert check.status == "ok" and check.data["micro_batch"] == plan.micro_batch


def test_no_micro_batch_fits_is_not_ready_with_the_memory_needed(tiny_params, tmp_path, monkeypatch):
    from test_training_memory import FakeResidentSet, mock_mem_available

    FakeResidentSet().install(monkeypatch)
    mock_mem_available(monkeypatch, tmp_path, 20_000_000)
    code, report = run_json("--params", str(tiny_params))
    checks = checks_by_name(report)
    assert code == 1 and report["ok"] is False
    memory = checks["memory"]
    assert (
        memory["status"] == "fail" and "a step needs ~" in memory["detail"] and "usable" in memory["detail"]
    )
    assert checks["time_here"]["status"] == "skip"
    line = doctor.verdict(doctor.Report([doctor.Finding(**c) for c in report["checks"]]))
    assert line.startswith("[bold red]NOT READY[/]: memory: not even a micro-batch of 1 fits: a step needs ~")


def test_time_here_is_in_years_for_a_huge_run_and_minutes_for_a_tiny_one(tiny_params, monkeypatch):
    """planned steps x accumulation x seconds per micro-batch, in the unit its size calls for: never "0 h"."""
    monkeypatch.setattr(planning, "time_micro_batch", lambda *args: planning.StepTime(12.1, "test timing"))
    plan = memory_module.MemoryPlan(768, 1, 768, 2, None, None)  # 384 accumulation
    huge = doctor.load_run_config(tiny_params, overrides=["train.epochs=100000", "train.eval_interval=10000"])
    check = doctor.check_time_here(huge, "cpu", plan, quick=False)
    assert (
        check.status == "fail"  # a year or more here: NOT READY, exit 1
        and " years here (12.1 s per micro-batch of 2 x 384 accumulation" in check.detail
    )
    assert check.detail.startswith("about ") and check.detail.endswith("use a GPU: see the table")
    line = doctor.verdict(doctor.Report([check]))
    assert line.startswith("[bold red]NOT READY[/]: time_here: about ") and " years here" in line
    days = doctor.load_run_config(tiny_params, overrides=["train.epochs=100", "train.eval_interval=100"])
    slow = doctor.check_time_here(days, "cpu", plan, quick=False)
    assert slow.status == "warn" and " days here" in slow.detail, slow.detail  # days: slow, not refused
    tiny = memory_module.MemoryPlan(8, 1, 8, 8, None, None)
    monkeypatch.setattr(planning, "time_micro_batch", lambda *args: planning.StepTime(0.5, "test timing"))
    small = doctor.load_run_config(tiny_params, overrides=["train.epochs=4", "train.eval_interval=2"])
    quick = doctor.check_time_here(small, "cpu", tiny, quick=False)
    steps = quick.data["steps"]
    assert quick.status == "ok" and quick.data["total_seconds"] == steps * 0.5
    assert quick.detail.startswith(f"about {planning.format_duration(steps * 0.5)} here")
    assert "minutes here" in quick.detail or "seconds here" in quick.detail


def test_durations_are_written_in_the_unit_their_size_calls_for():
    year = 365.25 * 86400
    assert planning.format_duration(4.2 * year) == "4.2 years"
    assert planning.format_duration(20 * 60) == "20 minutes"
    assert planning.format_duration(45) == "45 seconds" and planning.format_duration(0.02) == "0.02 seconds"
    assert (
        planning.format_duration(5 * 3600) == "5.0 hours"
        and planning.format_duration(30 * 86400) == "30 days"
    )


def test_slow_step_is_scaled_not_run_again(tiny_params, monkeypatch):
    """The paper shape on a 2-core CPU: the probe's 2-row step took a minute; the doctor runs no more steps."""

    def no_more_steps(*args):
        raise AssertionError("timed another step past the budget")

    monkeypatch.setattr(planning, "timed_steps", no_more_steps)
    step = memory_module.StepMemory(1, 1, 1, "test", step_seconds=(30.0, 60.0))
    plan = memory_module.MemoryPlan(768, 1, 768, 24, step, None)
    config = doctor.load_run_config(tiny_params)
    timing = planning.time_micro_batch(doctor.workload(config, False), config.train, "cpu", plan)
    assert timing.seconds == 60.0 * 24 / 2 and "x 24/2 (linear in rows" in timing.how


def test_fast_step_times_the_micro_batch_itself(tiny_params, monkeypatch):
    calls = []

    def recording(work, train, device, rows, global_batch, repeats):
        calls.append((rows, global_batch, repeats))
        return 0.25

    monkeypatch.setattr(planning, "timed_steps", recording)
    config = doctor.load_run_config(tiny_params)
    step = memory_module.StepMemory(1, 1, 1, "test", step_seconds=(0.01, 0.02))
    plan = memory_module.MemoryPlan(8, 1, 8, 8, step, None)
    timing = planning.time_micro_batch(doctor.workload(config, False), config.train, "cpu", plan)
    assert calls == [(8, 8, planning.TIMING_REPEATS)] and timing.seconds == 0.25
    assert "linear" not in timing.how  # measured at the micro-batch itself: nothing scaled


def test_nan_in_an_sdpa_comparison_fails(tiny_params, monkeypatch):
    """NaN > tolerance is False: a kernel giving NaN passed the old `d > tolerance` test."""

    def nan_attention(query, key, value, **kwargs):
        return value + float("nan")

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", nan_attention)
    config = doctor.load_run_config(tiny_params)
    _, numerics = doctor.check_sdpa(config, "cpu", quick=True)
    assert numerics.status == "fail" and "OUT OF TOLERANCE" in numerics.detail, numerics.detail
    monkeypatch.undo()

    from hrm import sdpa

    real = sdpa.measure

    def nan_gradient(
        *args,
    ):  # outputs right, one kernel's backward NaN (not the first: max() kept it by luck)
        got = real(*args)
        return dataclasses.replace(got, grad_runs={**got.grad_runs, "math": float("nan")})

    monkeypatch.setattr(sdpa, "measure", nan_gradient)
    _, numerics = doctor.check_sdpa(config, "cpu", quick=True)
    assert numerics.status == "fail" and "math backward" in numerics.detail, numerics.detail
    assert sdpa.nan_max([1.0, float("nan")]) != sdpa.nan_max([1.0, float("nan")])  # NaN, whatever the order
