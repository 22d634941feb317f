"""Thresholds for trained models: calibration on a run's validation parts (`validation`) and re-calibration
of an exported model on good parts from the line (`recalibrate`). The threshold methods, the false-reject
rate's range and the `Calibration` record live in `service.lifecycle` (numpy/scipy), shared with the
service's commissioning from recorded parts."""
