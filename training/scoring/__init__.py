"""Scoring preprocessed arrays: with the torch model's forward (`torch_model`) or, for an exported model,
with the service's engine (`engine`)."""
