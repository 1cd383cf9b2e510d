"""toybb: a JAX/Flax sandbox for extreme-token phenomena (attention sinks, value drains, residual peaks)."""

__version__ = "0.1.0"

from toybb.errors import ConfigError, ToybbError, TrainingDiverged  # noqa: E402,F401
