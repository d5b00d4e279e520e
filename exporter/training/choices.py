"""The choices of the training options, stated once and torch-free: the configuration
validates against them and the command line offers them, before PyTorch is imported."""

from __future__ import annotations

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "none")  # per step, after the warm-up
AMP_MODES = ("auto", "on", "off")  # auto: on for CUDA only

__all__ = ["AMP_MODES", "OPTIMIZERS", "SCHEDULES"]
