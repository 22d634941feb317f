"""The false-reject rate has one valid range, checked where it is given: a bad rate never costs a training run."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.cli import main as cli
from training.config import TrainConfig


@pytest.mark.parametrize("rate", [0.0, 0.5, 0.9, -0.01, float("nan")])
def test_config_refuses_a_rate_no_threshold_method_can_meet(rate: float) -> None:
    with pytest.raises(ValueError, match="false-reject rate"):
        TrainConfig(data="d", category="c", target_false_reject_rate=rate)


@pytest.mark.parametrize("command", ["train", "calibrate"])
def test_commands_refuse_a_bad_rate_before_any_work(command: str, tmp_path: Path, capsys) -> None:
    # The data and model folders do not exist: a command that got past its arguments would fail on them
    # (or, for train, only after the last epoch); the rate must be refused first, by argparse.
    args = {
        "train": ["train", "--data", str(tmp_path / "none"), "--category", "puck", "--out", str(tmp_path / "run")],
        "calibrate": ["calibrate", "--model", str(tmp_path / "none"), "--good", str(tmp_path / "none")],
    }[command]
    with pytest.raises(SystemExit) as exit_info:
        cli([*args, "--false-reject-rate", "0"])
    assert exit_info.value.code == 2
    assert "--false-reject-rate: must be in (0, 0.5), got 0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
