"""Outputs under hostile or unlucky conditions (docs/threat-model.md): a checkpoint cannot make the trainer write
outside its folders, an output folder holding someone else's files is refused instead of replaced, one trainer
per checkpoints folder, an older checkpoint or a full disk is one clear error, outputs follow the umask."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_helpers import metric_files, tiny_params

import hrm.training.step as step_module
from hrm.io import (
    MANIFEST,
    UserError,
    atomic_write_json,
    atomic_write_text,
    output_path,
    staged_directory,
    write_failure,
)
from hrm.training import checkpoint, loop
from hrm.training.logging import logged_files

REAL_STEP = step_module.train_step
STOP_AT = 4  # a checkpoint at step 4 (max_steps): enough to resume from

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def stopped_run(tiny_run_data, tmp_path_factory) -> dict:
    """A tiny run stopped by train.max_steps: its checkpoints folder and dvclive files, copied per test."""
    params = tiny_params(tiny_run_data, tmp_path_factory.mktemp("stopped"), max_steps=STOP_AT)
    loop.train(params)
    return params


@pytest.fixture
def resumable(stopped_run, tmp_path) -> dict:
    """Params under tmp_path holding a copy of the stopped run's checkpoints (same fingerprint: it resumes)."""
    params = tiny_params(Path(stopped_run["paths"]["hrm"]), tmp_path, max_steps=STOP_AT)
    shutil.copytree(stopped_run["paths"]["checkpoints"], params["paths"]["checkpoints"])
    return params


def common_file(params: dict) -> Path:
    (found,) = Path(params["paths"]["checkpoints"]).glob("*/step_*/common.pt")
    return found


def edit_common(params: dict, change) -> Path:
    path = common_file(params)
    common = torch.load(path, weights_only=True)
    change(common)
    torch.save(common, path)
    return path


# ---- a checkpoint cannot choose where the trainer writes


@pytest.mark.parametrize("entry", ["absolute", "../escape.txt", "notes.txt", "plots/metrics/train/x.tsv"])
def test_a_history_entry_the_logger_does_not_write_is_refused(resumable, tmp_path, entry):
    victim = tmp_path / "victim" / "bashrc"
    victim.parent.mkdir()
    victim.write_text("the user's own file", encoding="utf-8")
    name = str(victim) if entry == "absolute" else entry
    path = edit_common(resumable, lambda common: common["history"].update({name: "pwned"}))
    with pytest.raises(UserError) as refused:
        loop.train(resumable)
    assert str(path) in str(refused.value) and repr(name) in str(refused.value)
    assert victim.read_text(encoding="utf-8") == "the user's own file"
    assert not (Path(resumable["paths"]["train_log"]).parent / "escape.txt").exists()
    assert not (Path(resumable["paths"]["train_log"]) / "notes.txt").exists()


def test_the_history_allow_list_is_what_the_logger_wrote(stopped_run):
    written = set(metric_files(stopped_run))
    assert written <= logged_files()
    assert "metrics.json" in written and "plots/metrics/train/lm_loss.tsv" in written


def test_output_path_stays_inside_its_root(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "link").symlink_to(tmp_path)
    assert output_path(root, "sub/a.txt", "test") == (root / "sub" / "a.txt").resolve()
    for bad in (str(tmp_path / "a.txt"), "../a.txt", "sub/../../a.txt", "link/a.txt", "."):
        with pytest.raises(UserError, match="leaves the output folder"):
            output_path(root, bad, "test")


def test_resume_leaves_other_files_in_the_log_folder(resumable):
    """paths.train_log pointed at a folder that holds more than dvclive's files: resume keeps them."""
    log_dir = Path(resumable["paths"]["train_log"])
    log_dir.mkdir(parents=True)
    (log_dir / "keep.txt").write_text("mine", encoding="utf-8")
    loop.train(resumable)
    assert (log_dir / "keep.txt").read_text(encoding="utf-8") == "mine"
    assert (log_dir / "metrics.json").is_file()


def test_resume_through_a_symlinked_log_folder(resumable, tmp_path):
    real = tmp_path / "elsewhere" / "train"
    real.mkdir(parents=True)
    link = Path(resumable["paths"]["train_log"])
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(real, target_is_directory=True)
    loop.train(resumable)
    assert link.is_symlink() and (real / "metrics.json").is_file()


# ---- a folder replaced whole holds only what its stage wrote


def test_a_folder_with_foreign_files_is_not_replaced(tmp_path):
    target = tmp_path / "reports"
    (target / "train").mkdir(parents=True)
    (target / "train" / "metrics.json").write_text("{}", encoding="utf-8")
    (target / "notes.md").write_text("mine", encoding="utf-8")
    with pytest.raises(UserError, match=r"holds files this stage did not write \(notes\.md, train\)"):
        with staged_directory(target, manifest=True) as staging:
            atomic_write_json(staging / "metrics.json", {"v": 1})
    assert (target / "train" / "metrics.json").is_file() and (target / "notes.md").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports"]  # staging removed


def test_a_folder_of_this_stage_is_replaced_even_when_it_writes_fewer_files(tmp_path):
    target = tmp_path / "out"
    with staged_directory(target, manifest=True) as staging:
        atomic_write_text(staging / "a.txt", "1")
        atomic_write_text(staging / "b.txt", "1")
    assert json.loads((target / MANIFEST).read_text())["files"] == ["a.txt", "b.txt"]
    with staged_directory(target, manifest=True) as staging:  # b.txt: in the manifest, so ours
        atomic_write_text(staging / "a.txt", "2")
    assert sorted(p.name for p in target.iterdir()) == [MANIFEST, "a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .out.old left


def test_a_symlinked_output_folder_keeps_its_link_and_leaves_no_old_link(tmp_path):
    real = tmp_path / "disk" / "eval"
    real.mkdir(parents=True)
    link = tmp_path / "reports" / "eval"
    link.parent.mkdir()
    link.symlink_to(real, target_is_directory=True)
    with staged_directory(link, manifest=True) as staging:
        atomic_write_text(staging / "index.html", "x")
    assert link.is_symlink() and (real / "index.html").read_text() == "x"
    assert sorted(p.name for p in link.parent.iterdir()) == ["eval"]
    assert sorted(p.name for p in real.parent.iterdir()) == ["eval"]


def test_evaluate_refuses_a_reports_folder_holding_other_files_before_evaluating(tiny_run_data, tmp_path):
    from hrm.evaluation.runner import run_evaluation

    params = tiny_params(tiny_run_data, tmp_path)
    reports = tmp_path / "reports"
    (reports / "train").mkdir(parents=True)
    (reports / "timing").mkdir()
    params["paths"]["eval_reports"] = str(reports)
    with pytest.raises(UserError, match=r"reports holds files this stage did not write \(timing, train\)"):
        run_evaluation(params, progress=False)  # no model exists: the refusal comes first
    assert (reports / "train").is_dir() and (reports / "timing").is_dir()


def test_compare_out_holding_tracked_files_is_refused(tmp_path):
    from hrm.compare.report import write_outputs

    out = tmp_path / "docs"
    out.mkdir()
    (out / "design.md").write_text("tracked", encoding="utf-8")
    results = {"name": "t", "command": "c", "baseline": "b" * 40, "profile": "tiny", "seeds": 1}
    results.update({"data_seeds": False, "vehicles": [], "groups": [], "runs": []})
    with pytest.raises(UserError, match=r"did not write \(design\.md\)"):
        write_outputs(results, out)
    assert (out / "design.md").read_text(encoding="utf-8") == "tracked"
    write_outputs(results, tmp_path / "compare")
    write_outputs(results, tmp_path / "compare")  # its own folder: replaced
    assert (tmp_path / "compare" / "results.json").is_file()


# ---- one trainer per checkpoints folder


def write_lock(params: dict, pid: int, host: str | None = None) -> Path:
    root = Path(params["paths"]["checkpoints"])
    root.mkdir(parents=True, exist_ok=True)
    holder = {
        "pid": pid,
        "host": host or socket.gethostname(),
        "since": "2026-01-01 00:00:00 UTC",
        "token": "t",
    }
    (root / checkpoint.LOCK_FILE).write_text(json.dumps(holder), encoding="utf-8")
    return root / checkpoint.LOCK_FILE


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("where", ["this host, alive", "another host"])
def test_a_second_trainer_on_one_checkpoints_folder_is_refused(tiny_run_data, tmp_path, monkeypatch, where):
    params = tiny_params(tiny_run_data, tmp_path)
    pid, host = (os.getppid(), None) if where == "this host, alive" else (dead_pid(), "other-machine")
    lock = write_lock(params, pid, host)
    monkeypatch.setattr(step_module, "train_step", lambda *a, **k: pytest.fail("trained past the lock"))
    with pytest.raises(UserError) as refused:
        loop.train(params)
    shown_host = host or socket.gethostname()
    assert str(refused.value).startswith(
        f"another run (pid {pid}, host {shown_host}, since 2026-01-01 00:00:00 UTC) is using "
        f"{params['paths']['checkpoints']}"
    )
    assert lock.is_file() and json.loads(lock.read_text())["pid"] == pid  # not taken, not removed
    assert not list(Path(params["paths"]["train_log"]).iterdir())  # probed, nothing written


def test_a_stale_lock_is_taken_over_with_a_note_and_released(tiny_run_data, tmp_path, capsys):
    params = tiny_params(tiny_run_data, tmp_path, max_steps=2)
    pid = dead_pid()
    lock = write_lock(params, pid)
    loop.train(params)
    assert f"note: took over {lock} from a run that is gone (pid {pid}," in capsys.readouterr().err
    assert not lock.exists()


@pytest.mark.parametrize("ending", [RuntimeError, KeyboardInterrupt, SystemExit])
def test_the_lock_is_held_during_the_run_and_released_on_every_exit(
    tiny_run_data, tmp_path, monkeypatch, ending
):
    params = tiny_params(tiny_run_data, tmp_path)
    lock = Path(params["paths"]["checkpoints"]) / checkpoint.LOCK_FILE
    seen = []

    def failing(state, batch, **kwargs):
        seen.append(json.loads(lock.read_text())["pid"])
        raise ending("simulated failure")

    monkeypatch.setattr(step_module, "train_step", failing)
    with pytest.raises(ending):
        loop.train(params)
    assert seen == [os.getpid()] and not lock.exists()


def test_sigterm_releases_the_lock(tiny_run_data, tmp_path, monkeypatch):
    params = tiny_params(tiny_run_data, tmp_path)

    def signalled(state, batch, **kwargs):
        if state.step == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return REAL_STEP(state, batch, **kwargs)

    monkeypatch.setattr(step_module, "train_step", signalled)
    with pytest.raises(loop.TrainingInterrupted):
        loop.train(params)
    assert not (Path(params["paths"]["checkpoints"]) / checkpoint.LOCK_FILE).exists()


def test_two_train_stages_on_one_folder_the_second_is_refused(tiny_run_data, tmp_path):
    """Real processes: the second stage exits 1 naming the first; the first finishes undisturbed."""
    import yaml

    params = tiny_params(tiny_run_data, tmp_path)
    config = tmp_path / "params.yaml"
    config.write_text(yaml.safe_dump(params), encoding="utf-8")
    lock = Path(params["paths"]["checkpoints"]) / checkpoint.LOCK_FILE
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "stages.train", "--params", str(config)]
    first = subprocess.Popen(
        command, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 60
    while not lock.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    second = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
    _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err[-2000:]
    assert second.returncode == 1
    assert f"error: another run (pid {first.pid}, host {socket.gethostname()}, since " in second.stderr
    assert "Traceback" not in second.stderr and not lock.exists()


def test_only_rank_0_takes_the_lock(tmp_path):
    with checkpoint.checkpoints_lock(tmp_path / "ckpt", rank=1):
        assert not (tmp_path / "ckpt").exists()
    with checkpoint.checkpoints_lock(tmp_path / "ckpt", rank=0):
        assert (tmp_path / "ckpt" / checkpoint.LOCK_FILE).is_file()
        with pytest.raises(UserError, match="another run"):
            with checkpoint.checkpoints_lock(tmp_path / "ckpt", rank=0):
                pass
    assert not (tmp_path / "ckpt" / checkpoint.LOCK_FILE).exists()


def test_leftovers_of_interrupted_checkpoint_writes_are_removed(resumable):
    folder = common_file(resumable).parent.parent
    for name in (".step_000000003.old", ".step_000000004.tmp"):
        (folder / name).mkdir()
        (folder / name / "common.pt").write_bytes(b"half")
    resumable["train"]["max_steps"] = STOP_AT + 2
    loop.train(resumable)
    assert sorted(p.name for p in folder.iterdir()) == ["step_000000006"]


# ---- a checkpoint from older code


@pytest.mark.parametrize(
    ("drop", "file"),
    [("last_eval_step", "common.pt"), ("history", "common.pt"), ("cursor", "common.pt"), ("rng", "rank0.pt")],
)
def test_a_checkpoint_from_older_code_names_the_missing_key(resumable, drop, file):
    path = common_file(resumable).parent / file
    saved = torch.load(path, weights_only=True)
    del (saved["sampler"] if drop == "cursor" else saved)[drop]
    torch.save(saved, path)
    with pytest.raises(UserError) as refused:
        loop.train(resumable)
    assert str(refused.value) == (
        f"{path} was written by an older version of this code (missing {drop!r}); "
        f"delete {path.parent.parent} to start over"
    )


def test_a_checkpoint_of_an_older_format_exits_1_without_traceback(resumable, tmp_path):
    import yaml

    path = edit_common(resumable, lambda common: common.update(format_version=0))
    config = tmp_path / "params.yaml"
    config.write_text(yaml.safe_dump(resumable), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "stages.train", "--params", str(config)]
    result = subprocess.run(command, cwd=env["PYTHONPATH"], env=env, capture_output=True, text=True)
    assert result.returncode == 1
    assert (
        f"error: {path} was written by an older version of this code (format 0, this one reads 1)"
        in result.stderr
    )
    assert "Traceback" not in result.stderr
    assert not (Path(resumable["paths"]["checkpoints"]) / checkpoint.LOCK_FILE).exists()


# ---- machine failures while writing


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_last_one(resumable, monkeypatch):
    before = common_file(resumable)
    before_bytes = before.read_bytes()
    resumable["train"]["max_steps"] = STOP_AT + 2
    monkeypatch.setattr(checkpoint, "_save_synced", enospc)
    with pytest.raises(UserError) as refused:
        loop.train(resumable)
    folder = before.parent.parent
    assert str(refused.value) == (
        f"cannot write {folder}: No space left on device; free space on that disk (or point the output "
        "elsewhere) and run again (outputs written before are kept)"
    )
    assert before.read_bytes() == before_bytes
    assert sorted(p.name for p in folder.iterdir()) == [before.parent.name]  # no half-written .tmp
    assert not (Path(resumable["paths"]["checkpoints"]) / checkpoint.LOCK_FILE).exists()


def test_a_full_disk_under_the_training_log_is_one_line(tiny_run_data, tmp_path, monkeypatch):
    from dvclive import Live

    params = tiny_params(tiny_run_data, tmp_path)
    monkeypatch.setattr(Live, "log_metric", enospc)
    with pytest.raises(UserError, match=rf"^cannot write {params['paths']['train_log']}: No space left"):
        loop.train(params)


def test_a_full_disk_while_building_reports_keeps_the_old_ones(tmp_path):
    target = tmp_path / "eval"
    with staged_directory(target, manifest=True) as staging:
        atomic_write_text(staging / "index.html", "old")
    for failure in (errno.ENOSPC, errno.EROFS, errno.EACCES):
        message = rf"^cannot write {target / 'figures' / 'a.png'}: {os.strerror(failure)}; "
        with pytest.raises(UserError, match=message):  # the output's name, not its staging folder's
            with staged_directory(target, manifest=True) as staging:
                raise OSError(failure, os.strerror(failure), str(staging / "figures" / "a.png"))
    with pytest.raises(
        UserError, match=rf"^cannot write {target / 'metrics.json'}: No space left on device; "
    ):
        with staged_directory(target, manifest=True) as staging, pytest.MonkeyPatch.context() as patch:
            patch.setattr(os, "fsync", enospc)
            atomic_write_json(staging / "metrics.json", {"v": 1})
    assert (target / "index.html").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]


def test_a_failed_atomic_write_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    atomic_write_text(path, "old")
    monkeypatch.setattr(os, "fsync", enospc)
    with pytest.raises(UserError, match=rf"^cannot write {path}: No space left on device; free space"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_a_permission_error_reading_elsewhere_is_not_called_a_write_failure(tmp_path):
    elsewhere = OSError(errno.EACCES, "Permission denied", "/etc/shadow")
    assert write_failure(elsewhere, tmp_path) is None
    inside = OSError(errno.EACCES, "Permission denied", str(tmp_path / "a"))
    assert "give this user write permission" in str(write_failure(inside, tmp_path))
    assert write_failure(OSError(errno.ENOENT, "No such file"), tmp_path) is None


# ---- permissions


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_outputs_follow_the_umask(tmp_path, umask_022):
    atomic_write_text(tmp_path / "a.txt", "x")
    with staged_directory(tmp_path / "out") as staging:
        atomic_write_text(staging / "b.txt", "x")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "out" / "b.txt").stat().st_mode & 0o777 == 0o644
