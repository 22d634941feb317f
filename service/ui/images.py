"""Pictures of a part for the review station, from its archived evidence: pure functions, PNG bytes out.

- `rgb_png`: the uploaded image as PNG (browsers do not show TIFF).
- `depth_png`: the depth image the model saw, recomputed from the archived point cloud with the model's
  own preprocessing config (service.preprocessing): normalised, hole-filled and resized to S×S exactly as
  `prepare_depth` does before ImageNet normalisation; 0 (background) is black, the highest point white.
- `overlay_png`: the archived anomaly map (the 16-bit PNG of service.postprocessing.maps) resized to the
  upload's H×W, coloured (blue low, red high) and blended over the RGB image. Regions are drawn by the page
  (SVG), not burnt in.
"""

from __future__ import annotations

import cv2
import numpy as np

from service.codecs import DecodeLimits, decode_rgb, decode_xyz
from service.postprocessing.maps import decode_png_map
from service.preprocessing import PreprocessConfig, point_cloud_to_depth, resize_depth

OVERLAY_ALPHA = 0.5  # half map, half part: the defect stays recognisable under its colour


def _png(pixels: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", pixels)
    if not ok:
        raise RuntimeError("OpenCV failed to encode a PNG")
    return buf.tobytes()


def rgb_png(rgb: bytes, limits: DecodeLimits) -> bytes:
    return _png(cv2.cvtColor(decode_rgb(rgb, limits), cv2.COLOR_RGB2BGR))


def depth_image(xyz: bytes, limits: DecodeLimits, config: PreprocessConfig) -> np.ndarray:
    """(S, S) float32 in [0, 1]: the depth channel of the model's input before ImageNet normalisation."""
    return resize_depth(point_cloud_to_depth(decode_xyz(xyz, limits), config).depth, config.image_size)


def depth_png(xyz: bytes, limits: DecodeLimits, config: PreprocessConfig) -> bytes:
    depth = depth_image(xyz, limits, config)
    return _png(np.round(np.clip(depth, 0.0, 1.0) * 255.0).astype(np.uint8))


def overlay_png(rgb: bytes, anomaly_map: bytes, limits: DecodeLimits) -> bytes:
    part = cv2.cvtColor(decode_rgb(rgb, limits), cv2.COLOR_RGB2BGR)
    height, width = part.shape[:2]
    scores = cv2.resize(decode_png_map(anomaly_map), (width, height), interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap(np.round(np.clip(scores, 0.0, 1.0) * 255.0).astype(np.uint8), cv2.COLORMAP_JET)
    return _png(cv2.addWeighted(part, 1.0 - OVERLAY_ALPHA, heat, OVERLAY_ALPHA, 0.0))
