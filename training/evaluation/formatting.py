"""How numbers are written in the text reports (check-data, the training report, evaluation tables)."""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any


def fmt(value: Any, spec: str = ".4f") -> str:
    """A float (numpy's too) as `spec`; "n/a" for a missing (None) or undefined (NaN, inf) one; anything else,
    integers included, as str."""
    if value is None:
        return "n/a"
    if isinstance(value, Real) and not isinstance(value, Integral):
        return format(value, spec) if math.isfinite(value) else "n/a"
    return str(value)
