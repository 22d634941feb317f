"""Thresholds: the threshold methods (`thresholds`), the false-reject rate's valid range and flag (`rate`),
the typed result (`record.Calibration`), calibration of a trained model on its validation parts
(`validation`) and re-calibration of an exported model (`recalibrate`)."""
