"""Tests for the independent foreign-data builder (tests/fixtures) and the project's reader on its output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from tests.fixtures.foreign_dataset import DatasetBuildError, build, main, sample_part
from tests.fixtures.foreign_render import DEFECT_CODES, brick_mask, render_part

REPO = Path(__file__).resolve().parents[2]
H, W = 60, 80  # non-square on purpose
COUNTS = {"train": {"good": 3}, "validation": {"good": 2}, "test": {"good": 2, "dent": 2, "paint": 2, "chip": 2}}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("foreign")
    return root, build(root, seed=3, height=H, width=W, n_train=3, n_validation=2, n_test_good=2, n_test_per_defect=2)


def read_part(folder: Path, stem: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rgb = cv2.imread(str(folder / "rgb" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
    gt = cv2.imread(str(folder / "gt" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
    assert rgb is not None and gt is not None, f"unreadable PNG in {folder}"
    return np.asarray(rgb), tifffile.imread(folder / "xyz" / f"{stem}.tiff"), np.asarray(gt)


def test_layout_counts_and_file_formats(built: tuple[Path, dict]) -> None:
    root, summary = built
    assert summary["counts"] == COUNTS
    category = root / "brick"
    assert sorted(p.name for p in category.iterdir()) == ["test", "train", "validation"]
    for split, kinds in COUNTS.items():
        assert sorted(p.name for p in (category / split).iterdir()) == sorted(kinds)
        for kind, n in kinds.items():
            folder = category / split / kind
            stems = [f"{i:03d}" for i in range(n)]
            for sub, ext in (("rgb", "png"), ("xyz", "tiff"), ("gt", "png")):
                assert sorted(p.name for p in (folder / sub).iterdir()) == [f"{s}.{ext}" for s in stems]
            for stem in stems:
                rgb, xyz, gt = read_part(folder, stem)
                assert rgb.dtype == np.uint8 and rgb.shape == (H, W, 3)
                assert xyz.dtype == np.float32 and xyz.shape == (H, W, 3)
                assert gt.dtype == np.uint8 and gt.shape == (H, W)
                codes = set(np.unique(gt).tolist())
                assert codes == ({0} if kind == "good" else {0, DEFECT_CODES[kind]})
                zero = xyz == 0
                assert np.array_equal(zero.any(-1), zero.all(-1)), "a missing point must be (0, 0, 0)"
                assert 0.005 < zero.all(-1).mean() < 0.3
                z = xyz[..., 2][~zero.all(-1)]
                assert z.min() > 0.38 and z.max() < 0.62  # metres, camera 0.42-0.58 m above the table
                assert np.isfinite(xyz).all()


def test_cloud_is_organized_along_the_pixel_rays() -> None:
    # Every point must lie on its own pixel's ray: the same x/z (and y/z) across a row (column).
    part = sample_part(5, "train", "good", 0, height=H, width=W)
    xyz = render_part(part)[1].astype(np.float64)
    valid = ~(xyz == 0).all(-1)
    rows, cols = np.nonzero(valid)
    col = xyz[rows, cols, 0] / xyz[rows, cols, 2] * part.focal + (W - 1) / 2
    row = xyz[rows, cols, 1] / xyz[rows, cols, 2] * part.focal + (H - 1) / 2
    assert np.allclose(col, cols, atol=1e-3) and np.allclose(row, rows, atol=1e-3)


def test_same_seed_same_bytes_via_cli_and_function(
    built: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, _ = built
    args = ["--out", str(tmp_path), "--seed", "3", "--height", str(H), "--width", str(W), "--train", "3"]
    args += ["--validation", "2", "--test-good", "2", "--test-per-defect", "2"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["counts"] == COUNTS
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert all((root / f).read_bytes() == (tmp_path / f).read_bytes() for f in files)
    other = render_part(sample_part(4, "train", "good", 0, height=H, width=W))
    first = read_part(root / "brick" / "train" / "good", "000")
    assert not np.array_equal(other[0], first[0]) and not np.array_equal(other[1], first[1])


@pytest.mark.parametrize("index", range(3))
def test_each_defect_changes_only_its_modality(index: int) -> None:
    for kind in DEFECT_CODES:
        part = sample_part(1, "test", kind, index, height=H, width=W)
        rgb, xyz, gt = render_part(part)
        rgb0, xyz0, gt0 = render_part(part, with_defect=False)
        assert not gt0.any() and gt.any()
        same_rgb, same_xyz = np.array_equal(rgb, rgb0), np.array_equal(xyz, xyz0)
        assert (same_rgb, same_xyz) == {"dent": (True, False), "paint": (False, True), "chip": (False, False)}[kind]
        near_gt = cv2.dilate((gt > 0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        if not same_rgb:  # colour changes stay at the defect; a chip also shortens the table's cast shadow
            away = (rgb != rgb0).any(-1) & ~near_gt
            assert not (away & brick_mask(part)).any() if kind == "chip" else not away.any()
        if not same_xyz:  # so do geometry changes, apart from grazing-wall dropouts near it
            assert (xyz != xyz0).any(-1)[near_gt].any()


@pytest.mark.parametrize("kind", sorted(DEFECT_CODES))
def test_defects_lie_on_the_brick_and_have_a_plausible_size(kind: str) -> None:
    for index in range(3):
        part = sample_part(2, "test", kind, index, height=120, width=160)
        gt = render_part(part)[2] > 0
        assert not (gt & ~brick_mask(part)).any(), f"{kind} {index}: defect pixels off the brick"
        assert 0.002 < gt.mean() < 0.04, f"{kind} {index}: defect covers {gt.mean():.4f} of the image"


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetBuildError, match="only 'good'"):
        sample_part(0, "train", "dent", 0)
    with pytest.raises(DatasetBuildError, match="too small"):
        sample_part(0, "test", "good", 0, height=8, width=80)
    with pytest.raises(DatasetBuildError, match="at least one train part"):
        build(tmp_path, n_train=0)


def test_project_reader_accepts_the_data_set(built: tuple[Path, dict]) -> None:
    root, summary = built
    cmd = [sys.executable, "-m", "training", "check-data", "--data", str(root), "--category", "brick", "--json"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["splits"] == summary["counts"] == COUNTS
    assert report["parts"] == sum(sum(k.values()) for k in COUNTS.values())
    assert report["parts_without_xyz"] == 0 and report["failures"] == []
    assert report["image_sizes"] == [{"height": H, "width": W, "count": report["parts"]}]
    assert set(report["anomalous_pixel_fraction"]["per_defect"]) == set(DEFECT_CODES)
