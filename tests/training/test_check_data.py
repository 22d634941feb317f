"""Tests for `python -m training check-data` on hand-built data sets with known content."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from tests.training.test_data import TIRE, H, W, box_gt, needs_tire, table_xyz, write_part
from training.cli import main
from training.data.check import check_data
from training.data.layout import discover, load_gt

# Box (rows, cols) per test part and its true share of the image: the foreground the preprocessing
# should find. The missing strip (36×2 px of table) is the same in every part.
BOXES = {
    "small": (slice(16, 32), slice(20, 44)),  # 16×24 = 384 px
    "large": (slice(10, 40), slice(8, 48)),  # 30×40 = 1200 px
}
MISSING_FRACTION = 36 * 2 / (H * W)
CRACK_FRACTION = 8 * 6 / (H * W)  # box_gt's region


def build(root: Path, *, validation: bool = True, n_train: int = 4) -> float:
    """A small data set of category `widget`; returns the mean true foreground fraction of its parts."""
    areas = []
    parts = [("train", "good", f"{i:03d}") for i in range(n_train)]
    parts += [("validation", "good", "000"), ("validation", "good", "001")] if validation else []
    parts += [("test", "good", "000"), ("test", "good", "003"), ("test", "crack", "000")]
    parts += [("test", "crack", "001"), ("test", "dent", "000")]
    for i, (split, defect, stem) in enumerate(parts):
        name = "large" if i % 2 else "small"
        box = BOXES[name]
        areas.append((box[0].stop - box[0].start) * (box[1].stop - box[1].start) / (H * W))
        gt = box_gt(254) if defect != "good" else None
        write_part(root, split, defect, stem, value=i, xyz=table_xyz(box=box), gt=gt)
    return float(np.mean(areas))


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["check-data", *args])
    out, err = capsys.readouterr()
    return code, out, err


def as_json(capsys: pytest.CaptureFixture[str], root: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    code, out, _ = run_cli(capsys, "--data", str(root), "--category", "widget", "--json", *extra)
    return code, json.loads(out)


def test_json_counts_sizes_and_fractions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    true_foreground = build(tmp_path)
    code, report = as_json(capsys, tmp_path)

    assert code == 0
    assert report["splits"] == {
        "train": {"good": 4},
        "validation": {"good": 2},
        "test": {"good": 2, "crack": 2, "dent": 1},
    }
    assert report["parts"] == 11 and report["parts_without_xyz"] == 0
    assert report["image_sizes"] == [{"height": H, "width": W, "count": 11}]
    assert report["missing_fraction"] == pytest.approx(MISSING_FRACTION, abs=1e-9)
    assert report["foreground_fraction"] == pytest.approx(true_foreground, abs=0.01)
    assert sum(report["plane_methods"].values()) == 11
    assert report["anomalous_pixel_fraction"]["mean"] == pytest.approx(CRACK_FRACTION)
    assert set(report["anomalous_pixel_fraction"]["per_defect"]) == {"crack", "dent"}
    assert report["failures"] == []
    assert any(w.startswith("tiny train set: 4 part(s)") for w in report["warnings"])
    assert not any("validation" in w or "mixed" in w or "millimetres" in w for w in report["warnings"])


def test_foreground_tracks_the_true_object_area(tmp_path: Path) -> None:
    # A single box size per data set: the mean must follow the area, not sit near a constant.
    for name, box in BOXES.items():
        root = tmp_path / name
        for split, defect in [("train", "good"), ("test", "good"), ("test", "crack")]:
            gt = box_gt() if defect == "crack" else None
            write_part(root, split, defect, "000", xyz=table_xyz(box=box), gt=gt)
        area = (box[0].stop - box[0].start) * (box[1].stop - box[1].start) / (H * W)
        report = check_data(root, "widget")
        assert report["foreground_fraction"] == pytest.approx(area, abs=0.01), name


def test_human_readable_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build(tmp_path)
    code, out, _ = run_cli(capsys, "--data", str(tmp_path), "--category", "widget")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].endswith("category widget: 11 part(s)")
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:7]}
    assert rows == {
        "defect": ["train", "validation", "test"],
        "crack": ["0", "0", "2"],
        "dent": ["0", "0", "1"],
        "good": ["4", "2", "2"],
        "total": ["4", "2", "5"],
    }
    assert f"image sizes (H×W):         {H}×{W} (11)" in out
    assert "warning: tiny train set" in out


def test_missing_validation_and_mixed_sizes_warn(tmp_path: Path) -> None:
    build(tmp_path, validation=False, n_train=20)
    write_part(tmp_path, "train", "good", "020", hw=(40, 56))
    report = check_data(tmp_path, "widget")
    assert report["splits"]["validation"] == {}
    assert report["image_sizes"] == [
        {"height": 40, "width": 56, "count": 1},
        {"height": H, "width": W, "count": 25},
    ]
    warnings = "\n".join(report["warnings"])
    assert "no validation split: threshold calibration will have to hold out train parts" in warnings
    assert f"mixed image sizes (H×W): 40×56, {H}×{W}" in warnings
    assert "tiny train set" not in warnings


def test_millimetre_clouds_warn(tmp_path: Path) -> None:
    for split, defect in [("train", "good"), ("test", "good"), ("test", "crack")]:
        gt = box_gt() if defect == "crack" else None
        write_part(tmp_path, split, defect, "000", xyz=table_xyz() * 1000.0, gt=gt)
    warnings = "\n".join(check_data(tmp_path, "widget")["warnings"])
    assert "look like millimetres" in warnings


def test_broken_data_set_exits_2_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build(tmp_path)
    (tmp_path / "widget/test/crack/xyz/001.tiff").unlink()
    code, out, err = run_cli(capsys, "--data", str(tmp_path), "--category", "widget", "--json")
    assert code == 2 and out == ""
    assert f"rgb {tmp_path / 'widget/test/crack/rgb/001.png'} has no point cloud" in err

    code, out, err = run_cli(capsys, "--data", str(tmp_path), "--category", "gadget")
    assert code == 2 and "unknown category 'gadget'" in err and "found under" in err and "widget" in err


def test_failing_parts_are_listed_by_file_and_exit_1(tmp_path: Path, capsys) -> None:
    build(tmp_path)
    empty = tmp_path / "widget/train/good/xyz/001.tiff"
    tifffile.imwrite(empty, np.zeros((H, W, 3), np.float32))  # no point at all
    flat = tmp_path / "widget/train/good/xyz/002.tiff"
    tifffile.imwrite(flat, table_xyz(box=(slice(0, 0), slice(0, 0))))  # a bare table: no foreground
    odd = tmp_path / "widget/test/good/xyz/003.tiff"
    tifffile.imwrite(odd, table_xyz(H, W + 8))  # does not match its rgb image

    code, report = as_json(capsys, tmp_path)

    assert code == 1
    failed = {f["file"]: f["error"] for f in report["failures"]}
    assert set(failed) == {str(empty), str(flat), str(tmp_path / "widget/test/good/rgb/003.png")}
    assert failed[str(empty)].startswith("EmptyPointCloudError")
    assert "disagree in size" in failed[str(tmp_path / "widget/test/good/rgb/003.png")]
    # The empty cloud still counts as all missing; the refused parts add no foreground or plane method.
    assert report["missing_fraction"] == pytest.approx((9 * MISSING_FRACTION + 1.0) / 10, abs=1e-6)
    assert sum(report["plane_methods"].values()) == 8
    assert any("3 part(s) failed" in w for w in report["warnings"])


def test_progress_bar_only_for_many_parts(tmp_path: Path, capsys) -> None:
    build(tmp_path)
    assert "check-data" not in run_cli(capsys, "--data", str(tmp_path), "--category", "widget")[2]
    for i in range(4, 50):
        write_part(tmp_path, "train", "good", f"{i:03d}")
    code, _, err = run_cli(capsys, "--data", str(tmp_path), "--category", "widget", "--json")
    assert code == 0 and "check-data: 100%" in err and "57/57" in err


@needs_tire
def test_real_tire_sample_without_point_clouds(capsys: pytest.CaptureFixture[str]) -> None:
    args = ("--data", str(TIRE.parent), "--category", TIRE.name)
    code, _, err = run_cli(capsys, *args, "--json")
    assert code == 2 and "missing xyz folder" in err

    code, out, _ = run_cli(capsys, *args, "--json", "--allow-missing-xyz")
    report = json.loads(out)
    assert code == 0
    defects = ("combined", "contamination", "cut", "good", "hole")
    assert report["splits"] == {
        "train": {"good": 3},
        "validation": {"good": 2},
        "test": dict.fromkeys(defects, 3),
    }
    assert report["image_sizes"] == [{"height": 800, "width": 600, "count": 20}]
    assert report["parts_without_xyz"] == 20 and report["missing_fraction"] is None
    expected = {}
    for defect in defects[:3] + defects[4:]:
        samples = [s for s in discover(TIRE.parent, TIRE.name, "test", require_xyz=False) if s.defect == defect]
        expected[defect] = np.mean([load_gt(s.gt_path, (800, 600)).mean() for s in samples])
    assert report["anomalous_pixel_fraction"]["per_defect"] == pytest.approx(expected)
    assert all(0 < f < 0.05 for f in expected.values())
