"""The region of interest: a recipe's mask of the part's frame outside which the anomaly map is ignored.

The mask is a boolean (h, w) array in the frame of the uploaded image (any size of the same aspect): True
where the part is inspected. The map outside it is set to 0 before regions are found, so no region lies
outside it. The image score is the model's own (the maximum of its raw patch scores, which the exported
graph does not return), so it is scaled by how much of the map's peak lies inside the mask: the highest map
value inside over the highest overall. A part whose map peaks inside the mask keeps its score exactly; an
anomaly outside it lowers the score to what the map shows inside.
"""

from __future__ import annotations

import cv2
import numpy as np

from service.preprocessing.errors import PreprocessingError

# Relative aspect difference allowed between a mask and the upload (rounding of either side's pixels).
ASPECT_TOLERANCE = 0.02


class MaskMismatchError(PreprocessingError):
    """The recipe's mask does not have the upload's aspect ratio: it cannot say which pixels to keep."""


def fit_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """`mask`: (h, w) bool → (height, width) bool (nearest neighbour). Raises MaskMismatchError when the
    aspect ratios differ by more than ASPECT_TOLERANCE."""
    h, w = mask.shape
    if abs((h / w) / (height / width) - 1.0) > ASPECT_TOLERANCE:
        raise MaskMismatchError(
            f"the recipe's region-of-interest mask is {w}×{h} pixels and the part {width}×{height}: their "
            f"aspect ratios differ ({w / h:.3f} against {width / height:.3f}); the mask must have the part's aspect"
        )
    return _resize(mask, height, width)


def _resize(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    if mask.shape == (height, width):
        return mask
    return cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)


def apply_roi(
    score: float, model_map: np.ndarray, mask: np.ndarray, upload_shape: tuple[int, int]
) -> tuple[float, np.ndarray, np.ndarray]:
    """`model_map`: (S, S) float32 at the model's resolution, covering the upload's whole frame; `mask`:
    (h, w) bool in the upload's frame; `upload_shape`: the upload's (H, W), whose aspect the mask must have.
    Returns the score inside the mask, the (S, S) map with 0 outside it (see the module docstring) and the
    mask at the upload's (H, W)."""
    at_upload = fit_mask(mask, *upload_shape)
    inside = _resize(mask, *model_map.shape)  # the model's square frame stretches the upload's
    kept = np.where(inside, model_map, np.float32(0.0)).astype(np.float32, copy=False)
    peak = float(model_map.max())
    kept_peak = float(kept.max()) if inside.any() else 0.0
    scaled = float(score) if peak <= 0.0 or kept_peak >= peak else float(score) * kept_peak / peak
    return scaled, kept, at_upload
