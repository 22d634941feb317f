"""A model's life in the service: the versions its folder holds, which one is active, promotion and rollback,
the threshold rule shared with training, commissioning a new calibration from the line's records, shadowing
a candidate, and the drift watch."""
