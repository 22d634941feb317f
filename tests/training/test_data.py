"""Tests for training.data.layout: discovery by file stem, its errors, and the array loaders."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from service.codecs import CodecError, DecodeLimits, decode_xyz
from training.data.layout import (
    DatasetError,
    Sample,
    discover,
    list_categories,
    list_defects,
    load_gt,
    load_rgb,
    load_sample,
    load_xyz,
)

H, W = 48, 64  # non-square on purpose, like the real tire images (800×600)
BOX = (slice(16, 32), slice(20, 44))  # 16×24 px raised box: 384 / 3072 = 0.125 of the image
MISSING = (slice(6, 42), slice(56, 58))  # 36×2 px of table without points, away from box and corners
TIRE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mvtec3d-tire-sample"
TIRE_GT_COUNTS = {"combined": 5, "contamination": 28, "cut": 27, "good": 25, "hole": 27}


def table_xyz(h: int = H, w: int = W, box=BOX, missing=MISSING, lift: float = 0.02) -> np.ndarray:
    """(h, w, 3) float32 metres: a tilted table plane 0.6 m away, a box `lift` metres high, a hole."""
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    x, y = (u - w / 2) * 0.001, (v - h / 2) * 0.001  # 1 mm per pixel
    z = 0.6 + 0.05 * x + 0.03 * y
    z[box] -= lift  # nearer to the camera
    xyz = np.stack([x, y, z], axis=2).astype(np.float32)
    xyz[missing] = 0.0
    return xyz


def write_part(
    root: Path,
    split: str,
    defect: str,
    stem: str,
    *,
    category: str = "widget",
    value: int = 0,
    hw: tuple[int, int] = (H, W),
    rgb_ext: str = ".png",
    xyz_ext: str = ".tiff",
    xyz: np.ndarray | None = None,
    gt: np.ndarray | None = None,
    write_xyz: bool = True,
) -> None:
    """One part in the MVTec 3D-AD layout; `value` tags the rgb colour and the xyz z offset (in mm)."""
    d = root / category / split / defect
    for sub in ("rgb", "xyz", "gt"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    rgb = np.full((*hw, 3), value, dtype=np.uint8)
    assert cv2.imwrite(str(d / "rgb" / f"{stem}{rgb_ext}"), rgb)
    if write_xyz:
        cloud = table_xyz(*hw) if xyz is None else xyz
        cloud = cloud + np.array([0, 0, value * 0.001], dtype=np.float32) * (cloud[:, :, 2:] != 0)
        if xyz_ext == ".npy":
            np.save(d / "xyz" / f"{stem}.npy", cloud)
        else:
            tifffile.imwrite(d / "xyz" / f"{stem}{xyz_ext}", cloud)
    if gt is not None:
        assert cv2.imwrite(str(d / "gt" / f"{stem}.png"), gt.astype(np.uint8))


def box_gt(code: int = 255, hw: tuple[int, int] = (H, W)) -> np.ndarray:
    gt = np.zeros(hw, dtype=np.uint8)
    gt[20:28, 24:30] = code
    return gt


# --- discovery -----------------------------------------------------------------------------------


def test_pairs_by_stem_with_shuffled_order_gaps_and_missing_good_masks(tmp_path: Path) -> None:
    stems = ["010", "002", "007", "003"]  # gaps, created out of order
    for s in stems:
        write_part(tmp_path, "test", "good", s, value=int(s), gt=box_gt(0) if s in ("002", "010") else None)
    for s in ["005", "001"]:
        write_part(tmp_path, "test", "crack", s, value=int(s), gt=box_gt(254), xyz_ext=".npy", rgb_ext=".jpg")

    samples = discover(tmp_path, "widget", "test")

    expected = [("crack", "001"), ("crack", "005")] + [("good", s) for s in ("002", "003", "007", "010")]
    assert [(s.defect, s.stem) for s in samples] == expected
    for s in samples:
        assert s.rgb_path.stem == s.xyz_path.stem == s.stem  # type: ignore[union-attr]
        assert s.is_anomalous == (s.defect == "crack")
        part = load_sample(s)
        # The rgb colour and the z offset were tagged with the same number: a positional pairing mixes them.
        assert part.rgb[0, 0, 0] == int(s.stem)
        assert part.xyz is not None
        assert part.xyz[0, 0, 2] == pytest.approx(table_xyz()[0, 0, 2] + int(s.stem) * 0.001, abs=1e-6)
    by_stem = {s.stem: s for s in samples}
    # Good part 003 has no mask although 002 and 010 do: position would have given it 010's mask.
    assert by_stem["003"].gt_path is None
    assert by_stem["010"].gt_path is not None and by_stem["010"].gt_path.name == "010.png"
    assert not load_sample(by_stem["003"]).gt.any()


def test_extension_filter_and_hidden_files_are_ignored(tmp_path: Path) -> None:
    write_part(tmp_path, "train", "good", "000")
    write_part(tmp_path, "train", "good", "001", rgb_ext=".PNG", xyz_ext=".TIF")
    good = tmp_path / "widget" / "train" / "good"
    for junk in ["rgb/.DS_Store", "rgb/._000.png", "rgb/Thumbs.db", "rgb/notes.txt", "xyz/.000.tiff",
                 "xyz/readme.md", "gt/000.bmp"]:  # fmt: skip
        (good / junk).write_bytes(b"not an image")
    (good / "rgb" / "subfolder.png").mkdir()
    (tmp_path / "widget" / "train" / ".ipynb_checkpoints").mkdir()

    samples = discover(tmp_path, "widget", "train")

    assert [s.stem for s in samples] == ["000", "001"]
    assert samples[1].rgb_path.name == "001.PNG" and samples[1].xyz_path.name == "001.TIF"  # type: ignore[union-attr]
    assert list_defects(tmp_path, "widget", "train") == ["good"]


def test_list_categories_lists_only_folders_with_splits(tmp_path: Path) -> None:
    write_part(tmp_path, "train", "good", "000", category="b_cat")
    write_part(tmp_path, "test", "good", "000", category="a_cat")
    (tmp_path / "calibration").mkdir()
    (tmp_path / ".cache" / "train").mkdir(parents=True)
    (tmp_path / "readme.txt").write_text("x")
    assert list_categories(tmp_path) == ["a_cat", "b_cat"]


def _error(tmp_path: Path, split: str = "test", **kwargs: object) -> str:
    with pytest.raises(DatasetError) as info:
        discover(tmp_path, kwargs.pop("category", "widget"), split, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


def test_rgb_without_xyz_names_the_file(tmp_path: Path) -> None:
    write_part(tmp_path, "test", "good", "000")
    write_part(tmp_path, "test", "good", "001", write_xyz=False)
    message = _error(tmp_path)
    rgb = tmp_path / "widget/test/good/rgb/001.png"
    assert f"rgb {rgb} has no point cloud 001.tiff" in message
    assert str(tmp_path / "widget/test/good/xyz") in message
    # Without the point-cloud requirement the part is kept, xyz_path None.
    samples = discover(tmp_path, "widget", "test", require_xyz=False)
    assert [(s.stem, s.xyz_path is None) for s in samples] == [("000", False), ("001", True)]


def test_xyz_without_rgb_names_the_file(tmp_path: Path) -> None:
    write_part(tmp_path, "test", "good", "000")
    tifffile.imwrite(tmp_path / "widget/test/good/xyz/004.tiff", table_xyz())
    message = _error(tmp_path)
    assert f"xyz {tmp_path / 'widget/test/good/xyz/004.tiff'} has no rgb image 004.*" in message
    assert "xyz" in _error(tmp_path, require_xyz=False)  # an orphan point cloud is always an error


def test_defective_part_without_gt_names_the_file(tmp_path: Path) -> None:
    write_part(tmp_path, "test", "crack", "000", gt=box_gt())
    write_part(tmp_path, "test", "crack", "001")
    message = _error(tmp_path)
    assert f"defective part {tmp_path / 'widget/test/crack/rgb/001.png'} has no ground-truth mask" in message
    assert "000.png" not in message


def test_missing_split_unknown_category_and_unknown_split(tmp_path: Path) -> None:
    write_part(tmp_path, "train", "good", "000", category="cookie")
    write_part(tmp_path, "train", "good", "000", category="bagel")
    assert _error(tmp_path, "validation", category="cookie") == (
        f"missing split folder {tmp_path / 'cookie' / 'validation'}"
    )
    message = _error(tmp_path, "train", category="tire")
    assert "unknown category 'tire'" in message and "bagel, cookie" in message
    assert "unknown split 'val'" in _error(tmp_path, "val", category="cookie")
    assert "is not a folder" in _error(tmp_path / "nowhere", "train")


def test_missing_rgb_folder_empty_split_and_duplicate_stems(tmp_path: Path) -> None:
    (tmp_path / "widget" / "test" / "good" / "xyz").mkdir(parents=True)
    assert f"missing rgb folder {tmp_path / 'widget/test/good/rgb'}" in _error(tmp_path)
    (tmp_path / "widget" / "train").mkdir()
    assert "holds no defect-type folders" in _error(tmp_path, "train")
    write_part(tmp_path, "validation", "good", "000")
    write_part(tmp_path, "validation", "good", "000", rgb_ext=".jpg")
    assert "two files with stem '000'" in _error(tmp_path, "validation")


def test_orphan_gt_is_an_error_for_full_data_and_skipped_for_partial(tmp_path, caplog) -> None:
    write_part(tmp_path, "test", "crack", "000", gt=box_gt())
    cv2.imwrite(str(tmp_path / "widget/test/crack/gt/001.png"), box_gt())
    assert f"gt {tmp_path / 'widget/test/crack/gt/001.png'} has no rgb image" in _error(tmp_path)
    with caplog.at_level(logging.WARNING, logger="training.data.layout"):
        samples = discover(tmp_path, "widget", "test", require_xyz=False)
    assert [s.stem for s in samples] == ["000"]
    assert "1 gt mask(s)" in caplog.text


def test_many_problems_are_counted_and_the_first_listed(tmp_path: Path) -> None:
    for i in range(13):
        write_part(tmp_path, "test", "crack", f"{i:03d}")
    message = _error(tmp_path)
    assert message.startswith("13 problem(s) in")
    assert "000.png" in message and "012.png" not in message and "... and 3 more" in message


# --- loaders -------------------------------------------------------------------------------------


def test_load_rgb_channel_order_gray_alpha_and_16_bit(tmp_path: Path) -> None:
    rgb = np.zeros((H, W, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 7
    tifffile.imwrite(tmp_path / "rgb.tiff", rgb, photometric="rgb")  # tifffile stores RGB order
    np.testing.assert_array_equal(load_rgb(tmp_path / "rgb.tiff"), rgb)
    cv2.imwrite(str(tmp_path / "bgr.png"), rgb[..., ::-1])  # OpenCV writes BGR order
    np.testing.assert_array_equal(load_rgb(tmp_path / "bgr.png"), rgb)

    gray = np.arange(H * W, dtype=np.uint16).reshape(H, W) % 256
    cv2.imwrite(str(tmp_path / "gray.png"), gray.astype(np.uint8))
    out = load_rgb(tmp_path / "gray.png")
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 1], gray)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])

    bgra = np.dstack([rgb[..., ::-1], np.full((H, W), 9, np.uint8)])
    cv2.imwrite(str(tmp_path / "alpha.png"), bgra)
    np.testing.assert_array_equal(load_rgb(tmp_path / "alpha.png"), rgb)

    deep = np.zeros((H, W, 3), dtype=np.uint16)
    deep[0, 0], deep[0, 1] = 65535, 257 * 10
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    out = load_rgb(tmp_path / "deep.png")
    assert out.dtype == np.uint8 and out[0, 0, 0] == 255 and out[0, 1, 0] == 10 and out[1, 1, 0] == 0


def test_load_rgb_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(DatasetError, match=r"cannot decode image .*broken\.png"):
        load_rgb(tmp_path / "broken.png")
    with pytest.raises(DatasetError, match=r"cannot read image .*absent\.png"):
        load_rgb(tmp_path / "absent.png")


def test_load_xyz_float64_npy_and_tiff(tmp_path: Path) -> None:
    xyz = table_xyz().astype(np.float64)
    np.save(tmp_path / "a.npy", xyz)
    out = load_xyz(tmp_path / "a.npy")
    assert out.dtype == np.float32 and out.shape == (H, W, 3)
    np.testing.assert_allclose(out, xyz, atol=1e-7)
    tifffile.imwrite(tmp_path / "b.tif", xyz.astype(np.float32))
    np.testing.assert_array_equal(load_xyz(tmp_path / "b.tif"), xyz.astype(np.float32))


def test_load_xyz_rejects_bad_shape_dtype_pickle_and_extension(tmp_path: Path) -> None:
    np.save(tmp_path / "flat.npy", np.zeros((H, W), np.float32))
    with pytest.raises(DatasetError, match=r"flat\.npy: NPY array has shape \(48, 64\); expected \(H, W, 3\)"):
        load_xyz(tmp_path / "flat.npy")
    tifffile.imwrite(tmp_path / "four.tiff", np.zeros((H, W, 4), np.float32))
    with pytest.raises(DatasetError, match=r"four\.tiff: TIFF has 4 samples per pixel"):
        load_xyz(tmp_path / "four.tiff")
    np.save(tmp_path / "int.npy", np.zeros((H, W, 3), np.int32))
    with pytest.raises(DatasetError, match=r"int\.npy: NPY array is int32"):
        load_xyz(tmp_path / "int.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match=r"cannot read point cloud .*obj\.npy: .*pickle \(refused\)"):
        load_xyz(tmp_path / "obj.npy")
    with pytest.raises(DatasetError, match=r"extension '\.ply'"):
        load_xyz(tmp_path / "cloud.ply")


@pytest.mark.parametrize("suffix", [".tiff", ".npy"])
def test_a_non_finite_cloud_is_treated_as_the_service_treats_it(tmp_path: Path, suffix: str) -> None:
    """One reader, one rule: NaN (no point) is kept by both; an infinite coordinate is refused by both."""
    xyz = table_xyz().astype(np.float32)
    xyz[0, 0] = np.nan
    infinite = xyz.copy()
    infinite[:, 3, 2] = np.inf  # one column of depths: H coordinates
    nan_file, inf_file = tmp_path / f"nan{suffix}", tmp_path / f"inf{suffix}"
    for path, cloud in ((nan_file, xyz), (inf_file, infinite)):
        if suffix == ".npy":
            np.save(path, cloud)
        else:
            tifffile.imwrite(path, cloud)
    served = decode_xyz(nan_file.read_bytes(), DecodeLimits())
    np.testing.assert_array_equal(load_xyz(nan_file), served)  # NaN where NaN, same values elsewhere
    assert np.isnan(served[0, 0]).all()
    with pytest.raises(CodecError, match=r"48 coordinates are infinite"):
        decode_xyz(inf_file.read_bytes(), DecodeLimits())
    with pytest.raises(DatasetError, match=r"inf\.(tiff|npy): 48 coordinates are infinite"):
        load_xyz(inf_file)


def test_load_gt_class_codes_are_true_and_none_is_all_false(tmp_path: Path) -> None:
    gt = np.zeros((H, W), np.uint8)
    gt[1, 2], gt[3, 4], gt[5, 6] = 253, 254, 255
    cv2.imwrite(str(tmp_path / "m.png"), gt)
    mask = load_gt(tmp_path / "m.png", (H, W))
    assert mask.dtype == bool and mask.sum() == 3 and mask[1, 2] and mask[3, 4] and mask[5, 6]
    assert not load_gt(None, (H, W)).any() and load_gt(None, (H, W)).shape == (H, W)
    with pytest.raises(DatasetError, match=r"m.png is 48×64 \(H×W\); expected 64×48"):
        load_gt(tmp_path / "m.png", (W, H))


def test_load_sample_non_square_and_size_mismatch(tmp_path: Path) -> None:
    write_part(tmp_path, "test", "crack", "000", gt=box_gt(253))
    part = load_sample(discover(tmp_path, "widget", "test")[0])
    assert part.rgb.shape == (H, W, 3) and part.xyz is not None and part.xyz.shape == (H, W, 3)
    assert part.gt.shape == (H, W) and part.gt.sum() == 8 * 6

    write_part(tmp_path, "test", "crack", "001", gt=box_gt(), xyz=table_xyz(H, W - 4))
    sample = discover(tmp_path, "widget", "test")[1]
    with pytest.raises(DatasetError) as info:
        load_sample(sample)
    assert f"{sample.rgb_path} is 48×64" in str(info.value)
    assert f"{sample.xyz_path} is 48×60" in str(info.value)
    write_part(tmp_path, "test", "crack", "002", gt=box_gt(hw=(W, H)))
    with pytest.raises(DatasetError, match=r"002\.png is 64×48"):
        load_sample(discover(tmp_path, "widget", "test")[2])


def test_sample_is_frozen() -> None:
    sample = Sample("c", "test", "good", "000", Path("a.png"), None, None)
    with pytest.raises(AttributeError):
        sample.stem = "001"  # type: ignore[misc]


# --- the real MVTec 3D-AD tire sample (masks and a few images, no point clouds) ------------------

needs_tire = pytest.mark.skipif(not TIRE.is_dir(), reason=f"real data sample not present at {TIRE}")


@needs_tire
def test_real_tire_masks_shapes_counts_and_codes() -> None:
    counts = {}
    for defect_dir in sorted((TIRE / "test").iterdir()):
        files = sorted((defect_dir / "gt").glob("*.png"))
        counts[defect_dir.name] = len(files)
        for path in files:
            raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            mask = load_gt(path, (800, 600))  # H×W as documented: portrait
            np.testing.assert_array_equal(mask, raw > 0)
            if defect_dir.name == "good":
                assert not mask.any(), path
            else:
                assert mask.any(), path
                assert set(np.unique(raw)) - {0} <= {253, 254, 255}, path
    assert counts == TIRE_GT_COUNTS


@needs_tire
def test_real_tire_discover_pairs_what_exists() -> None:
    root, category = TIRE.parent, TIRE.name
    assert category in list_categories(root)
    with pytest.raises(DatasetError, match="missing xyz folder"):
        discover(root, category, "test")
    sizes = {"train": 3, "validation": 2, "test": 15}
    for split, n in sizes.items():
        samples = discover(root, category, split, require_xyz=False)
        assert len(samples) == n
        for s in samples:
            assert s.xyz_path is None
            if split == "test":  # every tire test part, good ones too, has a mask
                assert s.gt_path is not None and s.gt_path.stem == s.stem
            else:
                assert s.gt_path is None
    part = load_sample(discover(root, category, "test", require_xyz=False)[3])  # contamination/000
    assert part.sample.defect == "contamination" and part.xyz is None
    assert part.rgb.shape == (800, 600, 3) and part.rgb.dtype == np.uint8
    assert part.gt.shape == (800, 600) and part.gt.any()
