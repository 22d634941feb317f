"""The anomaly map: back to the upload's size, the share above the threshold, encoded for the answer (and the
archived 16-bit PNG read back)."""

from __future__ import annotations

import io
from typing import Literal

import cv2
import numpy as np

MapEncoding = Literal["png", "npy"]
PNG_SCALE = 65535  # 16-bit PNG: value = pixel / 65535, so scores in [0, 1] keep 1.5e-5 resolution


class MapDecodeError(ValueError):
    """Bytes that are not a 16-bit grayscale PNG map (what `encode_map(..., "png")` writes)."""


def map_to_input_size(amap: np.ndarray, height: int, width: int) -> np.ndarray:
    """`amap`: (S, S) float32 scores at the model's resolution → (height, width) float32, bilinear.

    Preprocessing resizes the whole input to S×S (no crop), so the inverse resize lines the map up with
    every pixel of the upload.
    """
    if amap.ndim != 2:
        raise ValueError(f"anomaly map must be 2-D, got shape {amap.shape}")
    if amap.shape == (height, width):
        return amap.astype(np.float32, copy=False)
    return cv2.resize(amap.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)


def defect_area_fraction(amap: np.ndarray, threshold: float) -> float:
    """Share of the image's pixels whose map value exceeds the image threshold (same > rule as the verdict)."""
    return float(np.count_nonzero(amap > threshold)) / float(amap.size)


def encode_map(amap: np.ndarray, encoding: MapEncoding) -> bytes:
    """`amap`: (H, W) float32 in [0, 1]. `png` is 16-bit grayscale (pixel / 65535); `npy` is float32."""
    if encoding == "png":
        scaled = np.round(np.clip(amap, 0.0, 1.0) * PNG_SCALE).astype(np.uint16)
        ok, buf = cv2.imencode(".png", scaled)
        if not ok:
            raise RuntimeError("OpenCV failed to encode the anomaly map as PNG")
        return buf.tobytes()
    if encoding == "npy":
        out = io.BytesIO()
        np.save(out, amap.astype(np.float32), allow_pickle=False)
        return out.getvalue()
    raise ValueError(f"unknown map encoding {encoding!r}; expected 'png' or 'npy'")


def decode_png_map(data: bytes) -> np.ndarray:
    """(H, W) float32 scores in [0, 1] from a 16-bit PNG map written by `encode_map`. Raises MapDecodeError."""
    pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.ndim != 2 or pixels.dtype != np.uint16:
        raise MapDecodeError("the anomaly map is not a 16-bit grayscale PNG")
    return pixels.astype(np.float32) / np.float32(PNG_SCALE)
