"""The head ensemble: its scores are the mean of its members' patch scores; `training ensemble` makes a run
of it that evaluate and export read like any other, and refuses members that are not one training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.training.tiny_run import TRAIN_ARGS
from training import runs
from training.cli import main as cli
from training.model.backbones import build_backbone
from training.model.bridgenet import BridgeNet
from training.model.ensemble import HeadEnsemble

SIZE = 64


def _members(n: int) -> list[BridgeNet]:
    backbone = build_backbone("tf_efficientnet_lite0")
    members = []
    for seed in range(n):
        torch.manual_seed(seed)
        members.append(BridgeNet(backbone, feature_dim=32, image_size=SIZE).eval())
    return members


def test_the_ensemble_scores_the_mean_of_its_members_patch_scores() -> None:
    members = _members(3)
    ensemble = HeadEnsemble(members).eval()
    g = torch.Generator().manual_seed(1)
    rgb, depth = torch.randn(2, 3, SIZE, SIZE, generator=g), torch.randn(2, 3, SIZE, SIZE, generator=g)
    with torch.no_grad():
        scores, maps = ensemble(rgb, depth)
        rows = members[0].to_rows(members[0].fuse(*members[0].embed(rgb, depth)))
        patches = [m.discriminate_rows(m.adapt_rows(rows)).reshape(2, m.grid, m.grid) for m in members]
        expected_scores, expected_maps = members[0].outputs(torch.stack(patches).mean(0))
        single, _ = members[0](rgb, depth)
    torch.testing.assert_close(scores, expected_scores)
    torch.testing.assert_close(maps, expected_maps)
    assert maps.shape == (2, SIZE, SIZE)
    # Not just the first member: the others' heads move the score.
    assert not torch.allclose(scores, single)
    # The mean of maxima is not the max of means: each member's own score bounds the ensemble's from above.
    assert torch.all(scores <= torch.stack([m(rgb, depth)[0] for m in members]).max(0).values + 1e-6)


def test_members_must_share_one_backbone_and_one_shape() -> None:
    (a,) = _members(1)
    with pytest.raises(ValueError, match="at least 2"):
        HeadEnsemble([a])
    own = BridgeNet(build_backbone("tf_efficientnet_lite0"), feature_dim=32, image_size=SIZE)
    with pytest.raises(ValueError, match="own backbone"):
        HeadEnsemble([a, own])
    with pytest.raises(ValueError, match="differ"):
        HeadEnsemble([a, BridgeNet(a.backbone, feature_dim=16, image_size=SIZE)])


@pytest.mark.slow
def test_an_ensemble_run_is_calibrated_evaluated_and_exported_like_a_run(data: Path, tmp_path: Path) -> None:
    common = ["--data", str(data), "--category", "puck", "--epochs", "1", *TRAIN_ARGS]
    for seed in (0, 1):
        assert cli(["train", *common, "--seed", str(seed), "--out", str(tmp_path / f"s{seed}")]) == 0
    assert cli(["train", *common, "--seed", "2", "--lr-adaptor", "1e-3", "--out", str(tmp_path / "other")]) == 0
    members = [str(tmp_path / "s0"), str(tmp_path / "s1")]
    with pytest.raises(ValueError, match=r"differs .* in \['lr_adaptor'\]"):
        cli(["ensemble", "--runs", members[0], str(tmp_path / "other"), "--out", str(tmp_path / "bad")])
    with pytest.raises(ValueError, match="same seed"):
        cli(["ensemble", "--runs", members[0], members[0], "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()

    out = tmp_path / "ensemble"
    assert cli(["ensemble", "--runs", *members, "--out", str(out), "--no-progress"]) == 0
    with pytest.raises(FileExistsError):
        cli(["ensemble", "--runs", *members, "--out", str(out)])
    run = runs.load_run(out)
    assert isinstance(run.model, HeadEnsemble) and len(run.model.members) == 2
    for member, folder in zip(run.model.heads, members, strict=True):
        saved = torch.load(Path(folder) / runs.MODEL_FILE, weights_only=True)["state"]
        assert all(torch.equal(member.state_dict()[k], v) for k, v in saved.items())
    with pytest.raises(ValueError, match="no last epoch of its own"):
        runs.load_last_epoch(out, run.model)
    report = json.loads((out / "report.json").read_text())
    selection = report["selection"]
    assert selection["method"] == "ensemble" and [m["seed"] for m in selection["members"]] == [0, 1]
    assert [m["run"] for m in selection["members"]] == ["s0", "s1"]  # folder names: no paths of this machine
    # Calibrated on the validation split with the ensemble's scores, not a member's.
    assert report["calibration"]["n_parts"] == 3
    own = json.loads((tmp_path / "s0" / "calibration.json").read_text())["threshold"]
    assert report["calibration"]["threshold"] != pytest.approx(own)

    assert cli(["evaluate", "--run", str(out), "--out", str(tmp_path / "eval.json"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["n_test"] == 12
    model_dir = tmp_path / "model"
    assert cli(["export", "--run", str(out), "--out", str(model_dir)]) == 0
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert json.loads(manifest["selection"])["method"] == "ensemble"
    assert manifest["threshold"]["value"] == pytest.approx(report["calibration"]["threshold"])
