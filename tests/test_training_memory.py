"""The CUDA memory probe without a GPU: torch.cuda's memory counters and the trial step replaced by a fake
allocator whose numbers are known, so the plan's arithmetic and its failure messages can be checked exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from train_helpers import TINY_ARCH, tiny_params

import hrm.training.step as step_module
from hrm.io import UserError
from hrm.training import memory

FIXED, PER_ROW, WORKSPACE = 3_000_000, 1_000_000, 400_000  # bytes; WORKSPACE: first CUDA work only, kept


class FakeCuda:
    """Allocated and peak bytes as the CUDA caching allocator reports them for the fake step below."""

    def __init__(self, out_of_memory_at: int | None = None):
        self.allocated = 0
        self.peak = 0
        self.steps = 0
        self.out_of_memory_at = out_of_memory_at

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name, fn in {
            "memory_allocated": lambda device=None: self.allocated,
            "max_memory_allocated": lambda device=None: self.peak,
            "reset_peak_memory_stats": lambda device=None: setattr(self, "peak", self.allocated),
            "synchronize": lambda device=None: None,
            "empty_cache": lambda: None,
        }.items():
            monkeypatch.setattr(torch.cuda, name, fn)
        monkeypatch.setattr(step_module, "train_step", self.step)

    def step(self, state, batch, **kwargs):
        rows = batch["inputs"].shape[0]
        if self.out_of_memory_at is not None and rows >= self.out_of_memory_at:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        if self.steps == 0:
            self.allocated += WORKSPACE  # cuBLAS workspace, allocator pools: paid once, never freed
        self.steps += 1
        self.peak = max(self.peak, self.allocated + FIXED + PER_ROW * rows)


def make_state(rows: int):
    from hrm.models import build_model
    from hrm.training.state import TrainState

    module = build_model(
        TINY_ARCH, seq_len=8, vocab_size=6, num_puzzle_identifiers=4, batch_size=rows, seed=0
    )
    return TrainState(head=module, module=module, optimizers={}, base_lrs={}, generator=torch.Generator())


BATCH = {
    "inputs": torch.ones(2, 8, dtype=torch.int32),
    "labels": torch.ones(2, 8, dtype=torch.int64),
    "puzzle_identifiers": torch.ones(2, dtype=torch.int32),
}


def measure() -> memory.StepMemory:
    return memory.measure_cuda_step(make_state, BATCH, torch.device("cpu"), global_batch_size=8)


def test_probe_warms_up_first_so_one_time_allocations_do_not_shrink_the_bytes_per_row(monkeypatch):
    """Measured without the warm-up: per row 1,000,000 - 400,000 and fixed 3,800,000 (the workspace landed in
    peak(1) only), so the plan's micro-batch came out too large for the card."""
    fake = FakeCuda()
    fake.install(monkeypatch)
    measured = measure()
    assert fake.steps == 3  # the warm-up, then 1 and 2 rows
    assert (measured.fixed, measured.per_example) == (FIXED, PER_ROW)
    assert measured.carry_per_row == memory.carry_bytes_per_row(make_state(1).module, BATCH)
    assert "warm-up" in measured.method


def test_probe_that_runs_out_of_memory_at_two_rows_plans_one(monkeypatch):
    FakeCuda(out_of_memory_at=2).install(monkeypatch)
    measured = measure()
    free = 100 * (FIXED + PER_ROW)
    assert measured.peak(8, 1) == FIXED + PER_ROW + measured.carry_per_row * 7
    assert memory.plan(8, 1, None, measured, free, free).micro_batch == 1
    with pytest.raises(UserError, match="micro_batch_size 4 does not fit.*the largest that fits is 1"):
        memory.plan(8, 1, 4, measured, int(4.5 * (FIXED + PER_ROW)), free)


def test_probe_that_runs_out_of_memory_at_one_row_says_what_to_change(monkeypatch):
    FakeCuda(out_of_memory_at=1).install(monkeypatch)
    with pytest.raises(UserError, match="memory probe's step at 1 row.*activation_checkpointing=true"):
        measure()


def test_probe_divergence_is_a_probe_failure_not_training_divergence(monkeypatch):
    fake = FakeCuda()
    fake.install(monkeypatch)

    def non_finite(state, batch, **kwargs):
        fake.step(state, batch, **kwargs)
        raise step_module.TrainingDiverged(
            "training diverged at step 1: the loss is nan. ...", "the loss is nan"
        )

    monkeypatch.setattr(step_module, "train_step", non_finite)
    with pytest.raises(memory.ProbeFailed) as failed:
        measure()
    assert not isinstance(failed.value, step_module.TrainingDiverged)
    message = str(failed.value)
    assert message.startswith("memory probe: its trial step at 1 row before training")
    assert "the loss is nan" in message and "diverged" not in message


def test_out_of_memory_while_planning_is_a_clear_error(tiny_run_data, tmp_path, monkeypatch, one_thread):
    """The plan runs inside the run's out-of-memory handling: a message naming a micro-batch, no traceback."""
    from hrm.training import loop

    def planning_runs_out(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(memory, "plan_micro_batch", planning_runs_out)
    params = tiny_params(tiny_run_data, tmp_path, global_batch_size=8, epochs=12, eval_interval=4)
    with pytest.raises(UserError, match=r"micro-batch 8; try train.micro_batch_size=4.*none yet"):
        loop.train(params)
    assert not Path(params["paths"]["model"]).exists()


# ------------------------------------------------------------------------------------- the CPU (RAM) plan


class FakeResidentSet:
    """The resident set the CPU probe reads, as known numbers: the warm-up step, then 1 and 2 rows (the
    trainer's real steps still run; only the counter is replaced)."""

    def __init__(self, fixed: int = 30_000_000, per_row: int = 10_000_000):
        self.fixed, self.per_row, self.reads = fixed, per_row, 0

    def counter(self) -> memory.PeakCounter:
        def peak() -> int:
            self.reads += 1
            rows = (1, 1, 2)[(self.reads - 1) % 3]
            return self.fixed + self.per_row * rows + (WORKSPACE if self.reads % 3 == 1 else 0)

        return memory.PeakCounter(lambda: 0, peak, lambda: None, "fake resident set")

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(memory, "rss_counter", self.counter)


def mock_mem_available(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, available: int) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal:       99999999 kB\nMemAvailable:   {available // 1024} kB\n")
    monkeypatch.setattr(memory, "MEMINFO", meminfo)


def ram_for_micro_batch(rows: int, fake: FakeResidentSet, carry_bytes: int = 1_000_000) -> int:
    """MemAvailable whose budget fits `rows` but not twice as many (the carry below 1 MB a row)."""
    return int((fake.fixed + fake.per_row * (rows + 0.5) + 8 * carry_bytes) / memory.MEMORY_HEADROOM)


def test_cpu_plan_cuts_a_batch_that_does_not_fit_the_ram_into_micro_batches(
    tiny_run_data, tmp_path, monkeypatch
):
    """Off CUDA the trainer measured nothing and ran the whole share at once: a batch beyond the RAM was
    killed by the kernel (exit -9, no message). Now the CPU plans like CUDA, against MemAvailable."""
    from hrm.training.data import PuzzleDataset
    from hrm.training.setup import TrainConfig

    fake = FakeResidentSet()
    fake.install(monkeypatch)
    mock_mem_available(monkeypatch, tmp_path, ram_for_micro_batch(2, fake))
    params = tiny_params(tiny_run_data, tmp_path, global_batch_size=8)
    config, dataset = TrainConfig.from_params(params["train"]), PuzzleDataset(tiny_run_data, "train")
    chosen = memory.plan_micro_batch(
        params["arch"], dataset.metadata, config, 1, torch.device("cpu"), None, dataset
    )
    assert (chosen.micro_batch, chosen.accumulation) == (2, 4)
    assert chosen.memory.fixed == fake.fixed and chosen.memory.per_example == fake.per_row
    assert len(chosen.memory.step_seconds) == 2 and "MemAvailable" in chosen.describe()
    mock_mem_available(monkeypatch, tmp_path, 10**12)
    roomy = memory.plan_micro_batch(
        params["arch"], dataset.metadata, config, 1, torch.device("cpu"), None, dataset
    )
    assert (roomy.micro_batch, roomy.accumulation) == (8, 1)  # fits: the whole share at once, as before


def test_cpu_run_that_cannot_fit_refuses_before_training(tiny_run_data, tmp_path, monkeypatch, one_thread):
    from hrm.training import loop

    FakeResidentSet().install(monkeypatch)
    mock_mem_available(monkeypatch, tmp_path, 20_000_000)
    params = tiny_params(tiny_run_data, tmp_path, global_batch_size=8)
    with pytest.raises(
        UserError, match=r"not even a micro-batch of 1 fits: a step needs ~.* MiB.*usable"
    ) as err:
        loop.train(params)
    assert "MemAvailable" in str(err.value) and "activation_checkpointing=true" in str(err.value)
    assert not Path(params["paths"]["model"]).exists()


def test_mem_available_is_read_from_meminfo(tmp_path, monkeypatch):
    mock_mem_available(monkeypatch, tmp_path, 3 * 2**30)
    assert memory.meminfo_available() == 3 * 2**30
    available = memory.available_memory("cpu")
    assert available.free == 3 * 2**30 and "MemAvailable" in available.source
    (tmp_path / "meminfo").write_text("MemTotal: 1 kB\n")
    assert memory.meminfo_available() is None
    assert memory.meminfo_available(tmp_path / "missing") is None


def test_rss_counter_resets_the_peak_and_reads_it(tmp_path):
    status = "Name:\tpython\nVmHWM:\t  900 kB\nVmRSS:\t  300 kB\n"
    (tmp_path / "status").write_text(status)
    (tmp_path / "clear_refs").write_text("")
    counter = memory.rss_counter(tmp_path)
    assert counter is not None and (tmp_path / "clear_refs").read_text() == "5"
    (tmp_path / "clear_refs").write_text("")
    assert counter.start() == 300 * 1024 and (tmp_path / "clear_refs").read_text() == "5"
    assert counter.peak() == 900 * 1024
    assert memory.rss_counter(tmp_path / "not-linux") is None  # no /proc: the plan falls back to the trace
