"""Eyecandies: the converter on a fixture rendered in the published format, and --samples-per-epoch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import tifffile

from service.preprocessing import point_cloud_to_depth
from tests.fixtures.eyecandies_fixture import CATEGORIES, FOCAL, build, make_scene
from training.cli import main as cli
from training.config import TrainConfig
from training.data.check import check_data
from training.data.convert_eyecandies import SUMMARY_FILE, convert
from training.data.epoch_sampling import epoch_subset
from training.data.eyecandies import EyecandiesError

SIZE = 64
SEED = 0
TOLERANCE = 0.0005  # metres: the 0.5 mm
# What the fixture's 16-bit depth over a few centimetres actually allows (~1 µm); tight enough to catch a
# half-pixel slip of the principal point (~0.14 mm at this distance), which 0.5 mm would let through.
QUANTISATION = 0.00002


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("eyecandies-src")
    return root, build(root, categories=tuple(CATEGORIES), size=SIZE, seed=SEED)


@pytest.fixture(scope="module")
def converted(source: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eyecandies-out")
    for category in CATEGORIES:
        convert(source[0], category, out, progress=False)
    return out


def _xyz(root: Path, category: str, split: str, defect: str, stem: str) -> np.ndarray:
    return tifffile.imread(root / category / split / defect / "xyz" / f"{stem}.tiff")


def _ray_ellipsoid(origin: np.ndarray, direction: np.ndarray, centre: np.ndarray, radii: np.ndarray) -> float:
    """Smallest t ≥ 0 with origin + t·direction on the axis-aligned ellipsoid (centre, radii)."""
    o, d = (origin - centre) / radii, direction / radii
    a, b, c = d @ d, 2 * o @ d, o @ o - 1
    disc = b * b - 4 * a * c
    assert disc > 0, "the chosen pixel must see the candy"
    return float((-b - np.sqrt(disc)) / (2 * a))


def test_known_points_come_back_within_half_a_millimetre(converted: Path) -> None:
    """Independent of the renderer: a belt point and a candy point solved in closed form from the pose."""
    scene = make_scene("ellipsoid", SEED, 2, "train", SIZE)
    rotation, origin = scene.pose[:3, :3], scene.pose[:3, 3]
    xyz = _xyz(converted, "GumDrop", "train", "good", "002").astype(np.float64)

    def ray(u: int, v: int) -> np.ndarray:  # camera frame, z = 1
        return np.array([(u - SIZE / 2) / FOCAL, (v - SIZE / 2) / FOCAL, 1.0])

    # The belt (world z = 0) at the top-left pixel.
    d = ray(0, 0)
    t = -origin[2] / (rotation @ d)[2]
    assert np.linalg.norm(xyz[0, 0] - t * d) < TOLERANCE

    # The pixel that sees the top of the (yaw-rotated) ellipsoid: solve in the candy's own frame.
    a, b, c = scene.size
    top = np.array([*scene.centre, 2 * c])
    p_cam = rotation.T @ (top - origin)
    u, v = (round(FOCAL * p_cam[i] / p_cam[2] + SIZE / 2) for i in (0, 1))
    cy, sy = np.cos(scene.yaw), np.sin(scene.yaw)
    to_local = np.array([[cy, sy, 0], [-sy, cy, 0], [0, 0, 1]])
    offset = np.array([*scene.centre, 0.0])
    direction = to_local @ (rotation @ ray(u, v))
    t = _ray_ellipsoid(to_local @ (origin - offset), direction, np.array([0, 0, c]), np.array([a, b, c]))
    hit_cam = t * ray(u, v)  # to_local is a rotation: t is still the camera z-depth
    assert np.linalg.norm(xyz[v, u] - hit_cam) < TOLERANCE
    assert hit_cam[2] < xyz[0, 0, 2] - 0.01  # the candy is well above the belt, so this is a candy point


def test_every_pixel_matches_the_rendered_truth(source: tuple[Path, dict[str, Any]], converted: Path) -> None:
    _, truth = source
    for category in CATEGORIES:
        for (split, sample_id), t in truth[category].items():
            if split == "test_private":
                continue
            ours = {"train": "train", "val": "validation", "test_public": "test"}[split]
            xyz = _xyz(converted, category, ours, t["defect"], sample_id.zfill(3))
            assert xyz.dtype == np.float32 and xyz.shape == (SIZE, SIZE, 3)
            assert np.abs(xyz - t["xyz_camera"]).max() < QUANTISATION, (category, split, sample_id)


def test_world_frame_goes_through_the_pose(source: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    root, truth = source
    convert(root, "candy ring", tmp_path, world_frame=True, progress=False)
    t = truth["CandyRing"][("train", "1")]
    xyz = _xyz(tmp_path, "CandyRing", "train", "good", "001")
    assert np.abs(xyz - t["xyz_world"]).max() < TOLERANCE
    belt = ~t["object_mask"]
    assert np.abs(xyz[..., 2][belt]).max() < TOLERANCE  # the belt is the world's z = 0 plane
    summary = json.loads((tmp_path / "CandyRing" / SUMMARY_FILE).read_text())
    assert summary["frame"].startswith("world")


def test_labels_types_masks_and_light(source: tuple[Path, dict[str, Any]], converted: Path, tmp_path: Path) -> None:
    root, truth = source
    summary = json.loads((converted / "GumDrop" / SUMMARY_FILE).read_text())
    assert summary["counts"] == {
        "train": {"good": 6},
        "validation": {"good": 3},
        "test": {"bumps": 2, "colors": 2, "dents": 2, "good": 3, "normals": 2},
    }
    assert summary["light"] == "image_5"
    # Samples with two defects go to the folder of the larger one.
    assert any(len([n for n in px.values() if n]) == 2 for px in summary["defect_pixels"].values())
    for (split, sample_id), t in truth["GumDrop"].items():
        if split != "test_public":
            continue
        folder = converted / "GumDrop" / "test" / t["defect"]
        gt = cv2.imread(str(folder / "gt" / f"{sample_id.zfill(3)}.png"), cv2.IMREAD_UNCHANGED)
        union = np.logical_or.reduce(list(t["masks"].values()))
        assert np.array_equal(gt > 0, union)
        assert set(np.unique(gt)) <= {0, 255}
        rgb = cv2.imread(str(folder / "rgb" / f"{sample_id.zfill(3)}.png"))
        source_rgb = cv2.imread(str(root / "GumDrop" / "test_public" / "data" / f"{sample_id}_image_5.png"))
        assert np.array_equal(rgb, source_rgb)
    assert not (converted / "GumDrop" / "train" / "good" / "gt").exists()

    convert(root, "GumDrop", tmp_path, light=0, progress=False)
    rgb = cv2.imread(str(tmp_path / "GumDrop" / "train" / "good" / "rgb" / "000.png"))
    assert np.array_equal(rgb, cv2.imread(str(root / "GumDrop" / "train" / "data" / "0_image_0.png")))


def test_cli_converts_skips_the_private_split_and_refuses_to_overwrite(
    source: tuple[Path, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["convert-eyecandies", "--src", str(source[0]), "--category", "Gum Drop", "--out", str(tmp_path)]
    assert cli([*args, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "skipped" in out and "test_private" in out
    assert sorted(p.name for p in (tmp_path / "GumDrop").iterdir()) == [SUMMARY_FILE, "test", "train", "validation"]
    assert cli([*args, "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err


def _copy_category(source: Path, tmp_path: Path) -> Path:
    src = tmp_path / "src"
    shutil.copytree(source / "GumDrop", src / "GumDrop")
    return src


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        ("truncate test_public/data/04_depth.png", "cannot decode PNG"),
        ("delete test_public/data/05_info_depth.yaml", "missing file"),
        ("eight-bit test_public/data/06_depth.png", "expected 16-bit"),
        ("garbage val/data/1_info_depth.yaml", "normalization"),
        ("delete test_public/data/07_metadata.yaml", "missing file"),
        ("mislabel test_public/data/08_metadata.yaml", "anomalous"),
    ],
)
def test_bad_input_names_the_file_and_writes_nothing(
    source: tuple[Path, dict[str, Any]], tmp_path: Path, breakage: str, expected: str
) -> None:
    src = _copy_category(source[0], tmp_path)
    action, rel = breakage.split()
    path = src / "GumDrop" / rel
    if action == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    elif action == "delete":
        path.unlink()
    elif action == "eight-bit":
        cv2.imwrite(str(path), np.zeros((SIZE, SIZE), np.uint8))
    elif action == "garbage":
        path.write_text("normalization: [1, 2\n")
    else:
        path.write_text("anomalous: 0\n")
    out = tmp_path / "data"
    with pytest.raises(EyecandiesError, match=expected) as info:
        convert(src, "GumDrop", out, progress=False)
    assert path.name in str(info.value)
    assert not out.exists(), "a failed conversion must leave nothing behind"

    other = tmp_path / "shared"
    (other / "Keep").mkdir(parents=True)
    with pytest.raises(EyecandiesError):
        convert(src, "GumDrop", other, progress=False)
    assert [p.name for p in other.iterdir()] == ["Keep"]


def test_unknown_category_lists_what_is_there(source: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    with pytest.raises(EyecandiesError, match="CandyRing, GumDrop"):
        convert(source[0], "Lollipop", tmp_path, progress=False)


def test_check_data_passes_and_the_plane_foreground_matches_the_candy(
    source: tuple[Path, dict[str, Any]], converted: Path
) -> None:
    """The measurement behind keeping the plane-based foreground (docs/RESULTS.md, "Eyecandies")."""
    _, truth = source
    for category in CATEGORIES:
        report = check_data(converted, category)
        assert not report["failures"]
        assert report["plane_methods"] == {"corners": 20}
        objects = [t["object_mask"].mean() for (s, _), t in truth[category].items() if s != "test_private"]
        assert report["foreground_fraction"] == pytest.approx(np.mean(objects), abs=0.02)
        ious = []
        for (split, sample_id), t in truth[category].items():
            if split != "train":
                continue
            foreground = point_cloud_to_depth(_xyz(converted, category, "train", "good", sample_id.zfill(3))).foreground
            ious.append((foreground & t["object_mask"]).sum() / (foreground | t["object_mask"]).sum())
        assert min(ious) > 0.9, (category, ious)


# ------------------------------------------------------------------------------------- samples per epoch


def test_epoch_subsets_are_fresh_reproducible_and_within_the_pool() -> None:
    pool = list(range(10, 1010))
    first = epoch_subset(pool, 400, seed=3, epoch=1)
    assert len(first) == len(set(first)) == 400 and set(first) <= set(pool) and first == sorted(first)
    assert epoch_subset(pool, 400, seed=3, epoch=1) == first
    assert epoch_subset(pool, 400, seed=3, epoch=2) != first
    assert epoch_subset(pool, 400, seed=4, epoch=1) != first
    seen = set().union(*(epoch_subset(pool, 400, seed=3, epoch=e) for e in range(1, 11)))
    assert len(seen) > 950  # over ten epochs nearly every part is used
    assert epoch_subset(pool, len(pool), seed=3, epoch=5) == pool
    for n in (0, len(pool) + 1):
        with pytest.raises(ValueError, match="samples-per-epoch"):
            epoch_subset(pool, n, seed=3, epoch=1)


def test_samples_per_epoch_is_validated_in_the_config() -> None:
    with pytest.raises(ValueError, match="do not combine"):
        TrainConfig(data="d", category="c", shots=2, samples_per_epoch=4).validate()
    with pytest.raises(ValueError, match="samples_per_epoch"):
        TrainConfig(data="d", category="c", samples_per_epoch=0).validate()
    assert TrainConfig(data="d", category="c", samples_per_epoch=400).to_dict()["samples_per_epoch"] == 400


def test_more_samples_per_epoch_than_parts_fails_before_training(converted: Path) -> None:
    from training.train.splits import load_splits  # imports torch: only this test needs it

    config = TrainConfig(data=str(converted), category="GumDrop", image_size=64, samples_per_epoch=7)
    with pytest.raises(ValueError, match="samples-per-epoch 7 but only 6 training parts"):
        load_splits(config, progress=False)


@pytest.mark.slow
def test_two_epochs_on_the_converted_fixture_train_and_evaluate(converted: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["--data", str(converted), "--category", "GumDrop", "--out", str(run), "--epochs", "2"]
    small = ["--image-size", "64", "--batch-size", "2", "--samples-per-epoch", "4", "--no-progress"]
    assert cli(["train", *args, *small]) == 0
    report = json.loads((run / "report.json").read_text())
    assert report["samples_per_epoch"] == 4 and report["n_train_items_per_epoch"] == 4
    assert report["n_train_parts"] == 6
    assert json.loads((run / "config.json").read_text())["samples_per_epoch"] == 4
    assert "a fresh random subset each epoch" in (run / "report.md").read_text()
    assert cli(["evaluate", "--run", str(run), "--out", str(tmp_path / "eval.json"), "--no-progress"]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["n_test"] == 11 and result["n_defective"] == 8
    assert set(result["per_defect_image_auroc"]) == {"bumps", "colors", "dents", "normals"}
    assert 0.0 <= result["image_auroc"] <= 1.0
