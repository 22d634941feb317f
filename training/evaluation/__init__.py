"""Evaluation on the test split: metrics, the `evaluate` command, run reports, figures, number formatting and
the demo sample."""
