"""Training loops for toy models."""

from toybb.records import load_metrics  # noqa: F401
from toybb.train.loop import train  # noqa: F401
from toybb.train.trainer import RunResult, Trainer  # noqa: F401
