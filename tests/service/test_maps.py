"""The anomaly map's resize, area share and encodings, and the 16-bit PNG read back (service.postprocessing.maps)."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest

from service.postprocessing.maps import (
    PNG_SCALE,
    MapDecodeError,
    decode_png_map,
    defect_area_fraction,
    encode_map,
    map_to_input_size,
)


def test_png_round_trip_keeps_scores_to_the_png_step() -> None:
    rng = np.random.default_rng(0)
    amap = rng.random((24, 40), dtype=np.float32)
    back = decode_png_map(encode_map(amap, "png"))
    assert back.dtype == np.float32 and back.shape == amap.shape
    assert np.abs(back - amap).max() <= 0.5 / PNG_SCALE + 1e-7
    # Scores outside [0, 1] are clipped on the way in.
    edges = decode_png_map(encode_map(np.array([[-0.5, 1.5]], np.float32), "png"))
    assert edges.tolist() == [[0.0, 1.0]]


def test_npy_keeps_float32_exactly() -> None:
    amap = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    assert np.array_equal(np.load(io.BytesIO(encode_map(amap, "npy"))), amap)


@pytest.mark.parametrize(
    "data",
    [b"not a png", cv2.imencode(".png", np.zeros((4, 4), np.uint8))[1].tobytes()],
    ids=["garbage", "8-bit"],
)
def test_decode_refuses_what_encode_map_does_not_write(data: bytes) -> None:
    with pytest.raises(MapDecodeError, match="16-bit grayscale PNG"):
        decode_png_map(data)


def test_map_goes_back_to_the_upload_size_and_the_share_uses_strictly_above() -> None:
    amap = np.zeros((8, 8), np.float32)
    amap[:4] = 0.5
    big = map_to_input_size(amap, 16, 32)
    assert big.shape == (16, 32) and big.dtype == np.float32
    assert defect_area_fraction(amap, 0.5) == 0.0
    assert defect_area_fraction(amap, 0.25) == 0.5
    with pytest.raises(ValueError, match="2-D"):
        map_to_input_size(np.zeros((2, 2, 2), np.float32), 4, 4)
