"""EMA of the weights (train.ema): the update rule, the in-place swap, the run loop and exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from train_helpers import assert_same_weights, final_weights, metric_files, tiny_params

import hrm.training.step as step_module
from hrm.config import ConfigError, load_params
from hrm.training import loop
from hrm.training.ema import WeightEMA
from hrm.training.setup import TrainConfig
from tests.conftest import REPO

REAL_STEP = step_module.train_step


pytestmark = pytest.mark.usefixtures("one_thread")


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor([1.0, 2.0, -4.0]))
        self.frozen = torch.nn.Parameter(torch.tensor([5.0]), requires_grad=False)
        self.register_buffer("table", torch.tensor([7.0]))


def test_update_rule_is_trms():
    toy = Toy()
    ema = WeightEMA(toy, 0.75)
    assert set(ema.shadow) == {"weight"}  # frozen parameters and buffers are not averaged (as TRM)
    expected = torch.tensor([1.0, 2.0, -4.0])
    for new in ([3.0, 2.0, 0.0], [-1.0, 6.0, 8.0]):
        with torch.no_grad():
            toy.weight.copy_(torch.tensor(new))
        ema.update(toy)
        expected = (1 - 0.75) * torch.tensor(new) + 0.75 * expected
        assert torch.allclose(ema.shadow["weight"], expected, rtol=0, atol=1e-6)
    # by hand: 0.25*3 + 0.75*1 = 1.5, then 0.25*-1 + 0.75*1.5 = 0.875
    assert ema.shadow["weight"][0].item() == pytest.approx(0.875)
    assert toy.weight.tolist() == [-1.0, 6.0, 8.0]  # the raw weights are untouched


def test_applied_swaps_in_the_shadow_and_restores_raw_bits():
    toy = Toy()
    ema = WeightEMA(toy, 0.5)
    with torch.no_grad():
        toy.weight.copy_(torch.tensor([0.1, 0.2, 0.3]))
    raw = toy.weight.detach().clone()
    ema.update(toy)
    with ema.applied(toy):
        assert torch.equal(toy.weight, ema.shadow["weight"])
        assert toy.table.item() == 7.0
    assert torch.equal(toy.weight, raw)
    with pytest.raises(RuntimeError), ema.applied(toy):
        raise RuntimeError("an error inside still restores")
    assert torch.equal(toy.weight, raw)


def params_file_with(tmp_path: Path, **train) -> Path:
    """The repository's params.yaml with some train keys changed."""
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["train"].update(train)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    return path


@pytest.mark.parametrize("rate", [0, 0.0, 1, 1.0, 1.5, -0.1, "0.9", True, None])
def test_rate_outside_open_unit_interval_is_refused(rate, tmp_path):
    with pytest.raises(ConfigError, match=r"train\.ema_rate must be a number in \(0, 1\)"):
        WeightEMA(Toy(), rate)
    with pytest.raises(ConfigError, match=r"train\.ema_rate"):
        load_params(params_file_with(tmp_path, ema_rate=rate))


def test_ema_settings_in_params_yaml_pass_the_schema(tmp_path):
    params = load_params(params_file_with(tmp_path, ema=True, ema_rate=0.99))
    config = TrainConfig.from_params(params["train"])
    assert (config.ema, config.ema_rate) == (True, 0.99)
    assert load_params(REPO / "params.yaml")["train"]["ema"] is False  # off by default


def test_train_stage_reports_a_bad_rate_without_traceback(tmp_path):
    from typer.testing import CliRunner

    from tests.test_training_loop import load_stage

    result = CliRunner().invoke(load_stage().app, ["--params", str(params_file_with(tmp_path, ema_rate=1.0))])
    assert result.exit_code == 1
    assert "train.ema_rate" in result.output and "Traceback" not in result.output


def test_ema_flag_must_be_boolean(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.ema"):
        load_params(params_file_with(tmp_path, ema="yes"))


# ---- the run loop ---------------------------------------------------------------------------------------


def ema_params(tiny_run_data: Path, out: Path, **overrides) -> dict:
    return tiny_params(tiny_run_data, out, ema=True, ema_rate=0.9, **overrides)


@pytest.fixture(scope="module")
def ema_reference(tiny_run_data, tmp_path_factory):
    params = ema_params(tiny_run_data, tmp_path_factory.mktemp("ema"))
    return params, loop.train(params)


def checkpoint_common(params: dict) -> dict:
    (folder,) = Path(params["paths"]["checkpoints"]).glob("*/step_*")
    return torch.load(folder / "common.pt", weights_only=True)


def test_ema_weights_saved_raw_weights_checkpointed_training_unchanged(
    ema_reference, tiny_run_data, tmp_path
):
    params, _ = ema_reference
    common = checkpoint_common(params)
    saved = final_weights(params)
    raw = common["model"]
    shadow = common["ema"]["shadow"]
    assert common["ema"]["rate"] == 0.9
    # models/hrm.pt = the shadow for every parameter, the raw value for buffers (puzzle embedding)
    for key, value in saved.items():
        expected = shadow[key] if key in shadow else raw[key]
        assert torch.equal(value, expected), key
    assert any(not torch.equal(saved[k], raw[k]) for k in shadow)
    # EMA changes what is evaluated and saved, never the training trajectory
    plain = tiny_params(tiny_run_data, tmp_path)
    loop.train(plain)
    ema_files, plain_files = metric_files(params), metric_files(plain)
    assert ema_files["plots/metrics/train/lm_loss.tsv"] == plain_files["plots/metrics/train/lm_loss.tsv"]
    assert_same_weights(checkpoint_common(plain)["model"], raw)
    assert ema_files["plots/metrics/eval/lm_loss.tsv"] != plain_files["plots/metrics/eval/lm_loss.tsv"]


def test_ema_crash_then_resume_bit_identical(ema_reference, tiny_run_data, tmp_path, monkeypatch):
    ref_params, summary = ema_reference
    crash = summary["step"] - 2  # after the second eval's checkpoint, before the end

    def dying(state, batch, **kwargs):
        if state.step + 1 == crash:
            raise SystemExit("simulated kill: no checkpoint")
        return REAL_STEP(state, batch, **kwargs)

    params = ema_params(tiny_run_data, tmp_path)
    monkeypatch.setattr(step_module, "train_step", dying)
    with pytest.raises(SystemExit):
        loop.train(params)
    monkeypatch.setattr(step_module, "train_step", REAL_STEP)
    loop.train(params)
    assert metric_files(params) == metric_files(ref_params)
    assert_same_weights(final_weights(params), final_weights(ref_params))
    ref_common, common = checkpoint_common(ref_params), checkpoint_common(params)
    assert_same_weights(common["ema"]["shadow"], ref_common["ema"]["shadow"])
    assert_same_weights(common["model"], ref_common["model"])
