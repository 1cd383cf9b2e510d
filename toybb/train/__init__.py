"""Training loops for toy models."""

from toybb.train.loop import RunResult, Trainer, load_metrics, train  # noqa: F401
