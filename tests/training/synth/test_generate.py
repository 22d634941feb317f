"""Tests for the synthetic data generator: layout, determinism, physics of defects, dropouts, command line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import tifffile

from training import cli
from training.synth.defects import DEFECTS
from training.synth.generate import (
    GOOD,
    PART_KINDS,
    OutputExistsError,
    SynthConfigError,
    generate,
    plan_part,
    render_part,
)
from training.synth.scene import Camera
from training.synth.shapes import CATEGORIES

SIZE = 128
COUNTS: dict[str, Any] = {"n_train": 3, "n_validation": 2, "n_test_per_defect": 2}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(out, ["puck", "bagel"], seed=3, size=SIZE, progress=False, **COUNTS)
    return out


def _read(folder: Path, stem: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rgb = cv2.imread(str(folder / "rgb" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
    xyz = tifffile.imread(folder / "xyz" / f"{stem}.tiff")
    gt = cv2.imread(str(folder / "gt" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
    assert rgb is not None and gt is not None, f"unreadable png in {folder}"
    return rgb[..., ::-1], xyz, gt


def _table_distance(xyz: np.ndarray) -> np.ndarray:
    """Height above a least-squares plane through the valid points of a 6-px image border (m, (H, W))."""
    border = np.zeros(xyz.shape[:2], bool)
    border[:6], border[-6:], border[:, :6], border[:, -6:] = True, True, True, True
    pts = xyz[border & (xyz[..., 2] > 0)].astype(np.float64)
    design = np.c_[pts[:, 0], pts[:, 1], np.ones(len(pts))]
    coef, *_ = np.linalg.lstsq(design, pts[:, 2], rcond=None)
    plane_z = coef[0] * xyz[..., 0] + coef[1] * xyz[..., 1] + coef[2]
    normal_len = np.sqrt(coef[0] ** 2 + coef[1] ** 2 + 1)
    return (plane_z - xyz[..., 2]) / normal_len  # positive = towards the camera


def test_layout_counts_and_class_ids(small_set: Path) -> None:
    assert sorted(p.name for p in small_set.iterdir()) == ["bagel", "puck"]
    for category in ("puck", "bagel"):
        root = small_set / category
        assert sorted(p.name for p in (root / "train").iterdir()) == [GOOD]
        assert sorted(p.name for p in (root / "validation").iterdir()) == [GOOD]
        assert sorted(p.name for p in (root / "test").iterdir()) == sorted(PART_KINDS)
        expected = {"train/good": 3, "validation/good": 2} | {f"test/{k}": 2 for k in PART_KINDS}
        for folder, n in expected.items():
            stems = [f"{i:03d}" for i in range(n)]
            assert sorted(p.name for p in (root / folder / "rgb").iterdir()) == [f"{s}.png" for s in stems]
            assert sorted(p.name for p in (root / folder / "xyz").iterdir()) == [f"{s}.tiff" for s in stems]
            assert sorted(p.name for p in (root / folder / "gt").iterdir()) == [f"{s}.png" for s in stems]
        class_ids = json.loads((root / "class_ids.json").read_text())
        assert class_ids == {"255": "dent", "254": "bump", "253": "stain", "252": "crack", "251": "hole", "0": "good"}
        info = json.loads((root / "synth.json").read_text())
        assert info["seed"] == 3 and info["image_size_hw"] == [SIZE, SIZE] and info["counts"] == expected


def test_files_have_the_mvtec_dtypes_and_codes(small_set: Path) -> None:
    for folder in sorted((small_set / "puck").glob("*/*")):
        rgb, xyz, gt = _read(folder, "001")
        assert rgb.shape == (SIZE, SIZE, 3) and rgb.dtype == np.uint8
        assert xyz.shape == (SIZE, SIZE, 3) and xyz.dtype == np.float32
        assert gt.shape == (SIZE, SIZE) and gt.dtype == np.uint8
        if folder.name == GOOD:
            assert not gt.any(), folder
        else:
            assert set(np.unique(gt)) == {0, DEFECTS[folder.name][0]}, folder


def test_same_seed_same_bytes_other_seed_other_parts(tmp_path: Path) -> None:
    args: dict[str, Any] = {"size": 64, "n_train": 2, "n_validation": 1, "n_test_per_defect": 1, "progress": False}
    generate(tmp_path / "a", ["block"], seed=7, **args)
    generate(tmp_path / "b", ["block"], seed=7, **args)
    generate(tmp_path / "c", ["block"], seed=8, **args)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 2 + 3 * (2 + 1 + len(PART_KINDS))
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
        if rel.suffix == ".tiff" or rel.parent.name == "rgb":
            assert (tmp_path / "a" / rel).read_bytes() != (tmp_path / "c" / rel).read_bytes(), rel


def test_point_cloud_is_a_pinhole_view_of_a_table_and_an_object(small_set: Path) -> None:
    camera = Camera.for_size(SIZE, SIZE)
    _, xyz, _ = _read(small_set / "puck" / "train" / "good", "000")
    valid = xyz[..., 2] > 0
    v, u = np.nonzero(valid)
    z = xyz[..., 2][valid]
    np.testing.assert_allclose(xyz[..., 0][valid], (u - camera.cx) * z / camera.focal_px, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(xyz[..., 1][valid], (v - camera.cy) * z / camera.focal_px, rtol=1e-5, atol=1e-7)
    assert 0.5 < np.median(z) < 0.7
    height = _table_distance(xyz)[valid]
    assert 0.012 < height.max() < 0.03  # an 18 mm puck, ±10 %, crowned
    foreground = height > 0.005
    assert 0.05 < foreground.mean() < 0.5
    # Sensor noise: the table's scatter about its plane is a few tenths of a millimetre.
    table = np.abs(height) < 0.002
    assert 0.00005 < height[table].std() < 0.0004


def test_dropouts_are_all_zero_and_hit_steep_walls() -> None:
    camera = Camera.for_size(SIZE, SIZE)
    for category in CATEGORIES:
        spec, _ = plan_part(category, camera, 0, "train", GOOD, 0)
        part = render_part(spec)
        zero = (part.xyz == 0).all(axis=-1)
        np.testing.assert_array_equal(zero, ~part.valid)
        assert ((part.xyz != 0).all(axis=-1) == part.valid).all()
        assert 0.8 < part.valid.mean() < 0.999
        # The rim of the object (outermost ring of its pixels) is mostly steep: mostly unseen.
        rim = part.object_mask & ~cv2.erode(part.object_mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        assert (~part.valid[rim]).mean() > 0.5, category
        assert part.valid[~part.object_mask].mean() > 0.95, category


@pytest.mark.parametrize("category", list(CATEGORIES))
@pytest.mark.parametrize("kind", list(DEFECTS))
def test_defect_changes_only_its_modality_and_only_its_gt(category: str, kind: str) -> None:
    camera = Camera.for_size(SIZE, SIZE)
    for index in range(2):
        spec, defect_seed = plan_part(category, camera, 0, "test", kind, index)
        clean, bad = render_part(spec), render_part(spec, kind, defect_seed)
        gt = bad.gt > 0
        assert gt.sum() >= 9 and not clean.gt.any()
        assert (gt <= clean.object_mask).all(), "the defect must lie on the object"
        rgb_changed = (clean.rgb != bad.rgb).any(axis=-1)
        xyz_changed = (clean.xyz != bad.xyz).any(axis=-1)
        assert not (rgb_changed & ~gt).any() and not (xyz_changed & ~gt).any()
        seen = gt & clean.valid
        modality = DEFECTS[kind][1]
        if modality == "depth":
            assert not rgb_changed.any(), "a geometry-only defect must not show in colour"
        else:
            assert rgb_changed[gt].mean() > 0.9
            colour_step = np.abs(clean.rgb.astype(int) - bad.rgb.astype(int)).max(axis=-1)[gt].mean()
            assert colour_step > 15
        if modality == "rgb":
            assert not xyz_changed.any(), "a colour-only defect must not move a point"
        else:
            assert xyz_changed[seen].mean() > 0.9
            dz = np.abs(clean.xyz[..., 2] - bad.xyz[..., 2])[seen & bad.valid]
            assert dz.max() > 0.001  # a few millimetres, not noise


def test_depth_defects_stay_in_the_foreground(small_set: Path) -> None:
    for kind in ("dent", "bump", "crack", "hole"):
        for stem in ("000", "001"):
            _, xyz, gt = _read(small_set / "bagel" / "test" / kind, stem)
            seen = (gt > 0) & (xyz[..., 2] > 0)
            assert seen.any()
            assert (_table_distance(xyz)[seen] > 0.005).all(), (kind, stem)


def test_written_files_are_the_rendered_parts(small_set: Path) -> None:
    camera = Camera.for_size(SIZE, SIZE)
    spec, defect_seed = plan_part("puck", camera, 3, "test", "crack", 1)
    part = render_part(spec, "crack", defect_seed)
    rgb, xyz, gt = _read(small_set / "puck" / "test" / "crack", "001")
    np.testing.assert_array_equal(rgb, part.rgb)
    np.testing.assert_array_equal(xyz, part.xyz)
    np.testing.assert_array_equal(gt, part.gt)


def test_categories_have_distinct_shapes() -> None:
    camera = Camera.for_size(SIZE, SIZE)
    shapes = {}
    for category in CATEGORIES:
        spec, _ = plan_part(category, camera, 0, "train", GOOD, 0)
        mask = render_part(spec).object_mask.astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        (_, _), (w, h), _ = cv2.minAreaRect(max(contours, key=cv2.contourArea))
        filled = cv2.drawContours(np.zeros_like(mask), contours, -1, 1, thickness=-1)
        shapes[category] = (max(w, h) / min(w, h), mask.sum() / filled.sum())
    assert shapes["puck"][0] < 1.15 and shapes["puck"][1] > 0.99
    assert shapes["block"][0] > 1.35 and shapes["block"][1] > 0.99
    assert shapes["bagel"][0] < 1.15 and shapes["bagel"][1] < 0.9  # the hole shows the table


def test_non_square_images(tmp_path: Path) -> None:
    generate(tmp_path, ["puck"], size=(96, 72), n_train=1, n_validation=1, n_test_per_defect=1, progress=False)
    rgb, xyz, gt = _read(tmp_path / "puck" / "test" / "hole", "000")
    assert rgb.shape == (96, 72, 3) and xyz.shape == (96, 72, 3) and gt.shape == (96, 72)
    assert (gt > 0).any()
    border = np.ones((96, 72), bool)
    border[2:-2, 2:-2] = False
    assert (_table_distance(xyz)[border & (xyz[..., 2] > 0)] < 0.003).all(), "the object must not touch the border"


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {"n_train": 1, "n_validation": 1, "n_test_per_defect": 1, "progress": False}
    with pytest.raises(SynthConfigError, match="teapot"):
        generate(tmp_path, ["teapot"], size=64, **kwargs)
    with pytest.raises(SynthConfigError, match="32"):
        generate(tmp_path, size=32, **kwargs)
    with pytest.raises(SynthConfigError, match="≥ 0"):
        generate(tmp_path, size=64, n_train=-1, n_validation=1, n_test_per_defect=1, progress=False)
    generate(tmp_path, size=64, **kwargs)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        generate(tmp_path, size=64, **kwargs)
    generate(tmp_path, size=64, overwrite=True, **{**kwargs, "n_train": 2})
    assert len(list((tmp_path / "puck" / "train" / "good" / "rgb").iterdir())) == 2
    foreign = tmp_path / "mine" / "block"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("not generated")
    with pytest.raises(OutputExistsError, match="not written by the generator"):
        generate(tmp_path / "mine", ["block"], size=64, overwrite=True, **kwargs)
    assert (foreign / "notes.txt").exists()


def test_command_line(tmp_path: Path) -> None:
    argv = ["synth", "--out", str(tmp_path), "--categories", "all", "--height", "72", "--width", "64"]
    argv += ["--train", "1", "--validation", "1", "--test-per-defect", "1", "--seed", "5", "--no-progress"]
    assert cli.main(argv) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(CATEGORIES)
    rgb, _, _ = _read(tmp_path / "bagel" / "validation" / "good", "000")
    assert rgb.shape == (72, 64, 3)
    assert cli.main(argv) == 2  # the folders exist now and --overwrite was not given


def test_small_category_timing(tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    summary = generate(tmp_path, ["puck"], size=128, n_train=10, n_validation=4, n_test_per_defect=3, progress=False)
    assert summary.n_parts == 10 + 4 + 3 * len(PART_KINDS)
    assert summary.counts["puck"]["test/good"] == 3
    # Reported, not asserted: wall time depends on the machine and its load.
    record_property("synth_small_category_seconds", round(summary.seconds, 3))
