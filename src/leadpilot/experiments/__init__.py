"""Experiments: bucketing units into arms, per-arm metrics, significance and sample-ratio checks (issue #6)."""
