"""preprocess_part end to end: golden outputs, shapes, info, errors, determinism and the no-torch rule."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service.preprocessing import (
    PREPROCESSING_VERSION,
    ImageTooSmallError,
    InvalidImageError,
    InvalidPointCloudError,
    PreprocessConfig,
    SizeMismatchError,
    preprocess_part,
)
from tests.service.golden.make_golden import compute, golden_cases, golden_path
from tests.service.golden.synthetic import make_part

REPO_ROOT = Path(__file__).resolve().parents[2]

# A few values pinned in the open, so a reader sees what the goldens hold: 40×48 tilted table + box.
PINNED = {
    "corners": {"foreground": 316, "depth_sum": 238.63468, "input_depth_sum": -4411.4728, "plane_d": 0.49206782},
    "fallback_nan": {"foreground": 315, "depth_sum": 238.63470, "input_depth_sum": -4411.4726, "plane_d": 0.49206783},
    "noisy": {"foreground": 316, "depth_sum": 249.64272, "input_depth_sum": -4334.2805, "plane_d": 0.49221451},
}


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    path = golden_path()
    assert path.exists(), f"{path.name} missing: a PREPROCESSING_VERSION bump needs new goldens (make_golden)"
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


@pytest.mark.parametrize("case", ["corners", "fallback_nan", "noisy"])
def test_outputs_match_the_goldens(case: str, golden: dict[str, np.ndarray]) -> None:
    outputs = compute(golden_cases()[case])
    for key, value in outputs.items():
        stored = golden[f"{case}/{key}"]
        assert value.shape == stored.shape and value.dtype == stored.dtype, key
        if value.dtype == bool:
            np.testing.assert_array_equal(value, stored, err_msg=f"{case}/{key}")
        else:
            np.testing.assert_allclose(value, stored, atol=2e-5, err_msg=f"{case}/{key}")
    pinned = PINNED[case]
    assert int(outputs["foreground"].sum()) == pinned["foreground"]
    assert float(outputs["depth"].sum(dtype=np.float64)) == pytest.approx(pinned["depth_sum"], abs=1e-3)
    assert float(outputs["input_depth"].sum(dtype=np.float64)) == pytest.approx(pinned["input_depth_sum"], abs=1e-2)
    assert float(outputs["plane"][3]) == pytest.approx(pinned["plane_d"], abs=1e-5)


def test_shapes_dtypes_and_info() -> None:
    part = make_part()
    out = preprocess_part(part.rgb, part.xyz, PreprocessConfig(image_size=64))
    assert out.rgb.shape == (3, 64, 64) and out.rgb.dtype == np.float32
    assert out.depth.shape == (3, 64, 64) and out.depth.dtype == np.float32
    assert out.foreground.shape == (64, 64) and out.foreground.dtype == bool
    assert out.info["plane_method"] == "corners"
    assert out.info["input_hw"] == [40, 48]
    assert out.info["version"] == PREPROCESSING_VERSION
    assert out.info["foreground_fraction"] == pytest.approx(316 / (40 * 48))
    json.dumps(out.info)  # JSON-able as it is
    # Background depth is 0 before normalisation: (0 − mean) / std in every channel.
    corner = out.depth[:, 0, 0]
    np.testing.assert_allclose(corner, -np.array([0.485, 0.456, 0.406]) / np.array([0.229, 0.224, 0.225]), atol=1e-6)


def test_default_config_runs_at_256() -> None:
    part = make_part()
    out = preprocess_part(part.rgb, part.xyz)
    assert out.rgb.shape == (3, 256, 256) and out.foreground.shape == (256, 256)


def test_non_square_input_maps_the_whole_image_onto_the_grid() -> None:
    # Tall like MVTec 3D-AD tire (H×W = 800×600), scaled down: the box sits in the lower half.
    part = make_part(80, 60, box_rows=(50, 70), box_cols=(10, 30), hole=None)
    out = preprocess_part(part.rgb, part.xyz, PreprocessConfig(image_size=32))
    rows = np.flatnonzero(out.foreground.any(axis=1))
    cols = np.flatnonzero(out.foreground.any(axis=0))
    # No crop and no letterbox: rows scale by 32/80, columns by 32/60 (±1 px from the bilinear "> 0").
    assert abs(rows[0] - 50 * 32 / 80) <= 1 and abs(rows[-1] + 1 - 70 * 32 / 80) <= 1
    assert abs(cols[0] - 10 * 32 / 60) <= 1 and abs(cols[-1] + 1 - 30 * 32 / 60) <= 1


def test_deterministic_across_calls() -> None:
    part = make_part(empty_corner=5, noise=0.0005, seed=4)
    a = preprocess_part(part.rgb, part.xyz, PreprocessConfig(image_size=32))
    b = preprocess_part(part.rgb, part.xyz, PreprocessConfig(image_size=32))
    assert a.info == b.info and a.info["plane_method"] == "border_ransac"
    for name in ("rgb", "depth", "foreground"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_views_and_byte_orders_give_the_same_result() -> None:
    part = make_part()
    config = PreprocessConfig(image_size=32)
    flipped = preprocess_part(part.rgb[:, ::-1], part.xyz[:, ::-1], config)  # negative-stride views
    copied = preprocess_part(part.rgb[:, ::-1].copy(), part.xyz[:, ::-1].copy(), config)
    big_endian = preprocess_part(part.rgb[:, ::-1].copy(), part.xyz[:, ::-1].astype(">f4"), config)
    for other in (copied, big_endian):
        np.testing.assert_array_equal(flipped.depth, other.depth)
        np.testing.assert_array_equal(flipped.rgb, other.rgb)
        np.testing.assert_array_equal(flipped.foreground, other.foreground)


def test_size_mismatch_names_both_sizes() -> None:
    part = make_part()
    with pytest.raises(SizeMismatchError, match=r"rgb is 40×47 but xyz is 40×48"):
        preprocess_part(part.rgb[:, :47], part.xyz)


def test_bad_rgb_and_xyz_are_refused_before_any_work() -> None:
    part = make_part()
    with pytest.raises(InvalidImageError, match="dtype float32"):
        preprocess_part(part.rgb.astype(np.float32), part.xyz)
    with pytest.raises(InvalidPointCloudError, match=r"shape \(40, 48\)"):
        preprocess_part(part.rgb, part.xyz[..., 2])
    with pytest.raises(ImageTooSmallError, match="at least 64"):
        preprocess_part(part.rgb, part.xyz, PreprocessConfig(min_side=64))


def test_importing_preprocessing_does_not_import_torch() -> None:
    code = "import sys, service.preprocessing; assert 'torch' not in sys.modules, 'torch was imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
