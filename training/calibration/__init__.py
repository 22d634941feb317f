"""Thresholds: the false-reject-rate rule and the threshold methods (`thresholds`), calibration of a trained
model on its validation parts (`validation`) and re-calibration of an exported model (`recalibrate`)."""
