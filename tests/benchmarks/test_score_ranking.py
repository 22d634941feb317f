"""benchmarks/score_ranking.py: the best threshold for K allowed false rejects, and where maps peak."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from score_ranking import best_detection, peak_places


def test_best_detection_lets_exactly_k_good_parts_through() -> None:
    good = np.array([0.1, 0.2, 0.3, 0.4, 0.9, 0.8])  # the two highest good parts: 0.9 and 0.8
    bad = np.array([0.85, 0.5, 0.35, 0.05])
    scores, defective = np.r_[good, bad], np.r_[np.zeros(6, bool), np.ones(4, bool)]
    assert best_detection(scores, defective, 0) == (0.9, 0)
    assert best_detection(scores, defective, 2) == (0.4, 2)  # 0.85 and 0.5 are above 0.4; 0.35 is not
    threshold, caught = best_detection(scores, defective, 3)
    assert threshold == 0.3 and caught == 3 and (good > threshold).sum() == 3
    with pytest.raises(ValueError, match="more than 6 good"):
        best_detection(scores, defective, 6)


def test_peak_places_tells_the_outline_from_inside_and_background() -> None:
    fg = np.zeros((64, 64), bool)
    fg[16:48, 16:48] = True
    maps = np.zeros((3, 64, 64), np.float32)
    maps[0, 32, 32] = 1.0  # the middle of the part
    maps[1, 17, 30] = 1.0  # one pixel inside the edge
    maps[2, 2, 2] = 1.0  # far off the part
    assert peak_places(maps, np.stack([fg] * 3), band_px=4) == {"background": 1, "outline": 1, "inside": 1}
