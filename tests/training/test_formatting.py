"""training.evaluation.formatting.fmt: the one way text reports write numbers."""

from __future__ import annotations

import math

import numpy as np

from training.evaluation.formatting import fmt


def test_floats_follow_the_spec_missing_and_undefined_are_na_others_are_text() -> None:
    assert fmt(0.123456) == "0.1235" and fmt(0.123456, ".3f") == "0.123"
    assert fmt(np.float32(0.5)) == "0.5000" and fmt(np.float64(2.0), ".1f") == "2.0"
    assert fmt(None) == fmt(math.nan) == fmt(np.float32("inf")) == "n/a"
    assert fmt(3) == "3" and fmt(np.int64(7)) == "7" and fmt("texture") == "texture"
