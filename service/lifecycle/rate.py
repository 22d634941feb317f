"""The false-reject rate: the one setting every threshold is calibrated for, and its one valid range.

Checked where it is given (`TrainConfig`, the `--false-reject-rate` flag of `train` and `calibrate`), so a
rate no method can meet is refused at once rather than after the last epoch. The range is (0, 0.5): the
fitted methods place the threshold at the (1 − rate) quantile of a fit, which is infinite at 0, and a
threshold that may reject half of the good parts or more is no acceptance test.
"""

from __future__ import annotations

import argparse
import math

FLAG = "--false-reject-rate"
DEFAULT = 0.01


def check_false_reject_rate(rate: float) -> float:
    """`rate` when it is in (0, 0.5); else ValueError saying so."""
    if not (isinstance(rate, int | float) and math.isfinite(rate) and 0.0 < rate < 0.5):
        raise ValueError(f"false-reject rate must be in (0, 0.5), got {rate}")
    return float(rate)


def false_reject_rate_arg(text: str) -> float:
    """argparse `type` for the flag: a number in (0, 0.5), else the usage error names the range."""
    try:
        return check_false_reject_rate(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be in (0, 0.5), got {text}") from None


def add_false_reject_rate_argument(p: argparse.ArgumentParser, default: float = DEFAULT) -> None:
    p.add_argument(
        FLAG,
        type=false_reject_rate_arg,
        default=default,
        help="share of good parts the calibrated threshold may reject, in (0, 0.5)",
    )
