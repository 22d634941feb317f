"""benchmarks/score_ranking.py: the best threshold for K allowed false rejects, and where maps peak."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from score_ranking import best_detection, main, peak_places

from tests.training.tiny_run import tiny_data, tiny_run
from training import runs


def test_best_detection_lets_exactly_k_good_parts_through() -> None:
    good = np.array([0.1, 0.2, 0.3, 0.4, 0.9, 0.8])  # the two highest good parts: 0.9 and 0.8
    bad = np.array([0.85, 0.5, 0.35, 0.05])
    scores, defective = np.r_[good, bad], np.r_[np.zeros(6, bool), np.ones(4, bool)]
    assert best_detection(scores, defective, 0) == (0.9, 0)
    assert best_detection(scores, defective, 2) == (0.4, 2)  # 0.85 and 0.5 are above 0.4; 0.35 is not
    threshold, caught = best_detection(scores, defective, 3)
    assert threshold == 0.3 and caught == 3 and (good > threshold).sum() == 3
    with pytest.raises(ValueError, match="more than 6 good"):
        best_detection(scores, defective, 6)


def test_peak_places_tells_the_outline_from_inside_and_background() -> None:
    fg = np.zeros((64, 64), bool)
    fg[16:48, 16:48] = True
    maps = np.zeros((3, 64, 64), np.float32)
    maps[0, 32, 32] = 1.0  # the middle of the part
    maps[1, 17, 30] = 1.0  # one pixel inside the edge
    maps[2, 2, 2] = 1.0  # far off the part
    assert peak_places(maps, np.stack([fg] * 3), band_px=4) == {"background": 1, "outline": 1, "inside": 1}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    data = tiny_data(tmp_path_factory.mktemp("data"))
    return data, tiny_run(data, tmp_path_factory.mktemp("run") / "run", epochs=2)


@pytest.mark.slow
def test_calibrating_on_the_validation_split_gives_the_runs_own_threshold(
    tiny: tuple[Path, Path], tmp_path: Path
) -> None:
    data, run = tiny
    out = tmp_path / "ranking.json"
    assert main(["--run", str(run), "--calibrate-on", str(data / "puck" / "validation"), "--false-rejects", "0",
                 "--json", str(out)]) == 0  # fmt: skip
    result = json.loads(out.read_text())
    report = json.loads((run / "report.json").read_text())
    assert result["weights"] == "selected" and result["epoch"] == report["selection"]["epoch"]
    calibrated = result["calibrated"]
    # The run calibrated its selected weights on the same 3 parts, with the same method and rate.
    assert calibrated["parts"] == 3 and calibrated["threshold"] == pytest.approx(report["calibration"]["threshold"])
    assert 0 <= calibrated["good_ng"] <= result["good_parts"]
    assert 0 <= calibrated["detected"] <= result["defective_parts"]


@pytest.mark.slow
def test_the_last_epochs_weights_are_the_checkpoints(tiny: tuple[Path, Path]) -> None:
    _, run = tiny
    model = runs.load_run(run).model
    with torch.no_grad():  # whatever epoch was selected, nothing of it may survive the load
        for parameter in model.parameters():
            parameter.zero_()
    assert runs.load_last_epoch(run, model) == 2
    saved = torch.load(run / runs.CHECKPOINT_FILE, map_location="cpu", weights_only=True)["trainer"]["model"]
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())
    with pytest.raises(FileNotFoundError, match="kept only in its checkpoint"):
        runs.load_last_epoch(run.parent, model)
