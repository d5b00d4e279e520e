"""Comparison metrics and parity tiers, shared by the export-time gate and on-device verify."""
