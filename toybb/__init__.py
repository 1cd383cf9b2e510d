"""toybb: a JAX/Flax sandbox for extreme-token phenomena (attention sinks, value drains, residual peaks).

`toybb.load(name_or_path)` is the entry point for Python: a toy run folder or a pretrained model, ready to
tokenize, run with captures and interventions (`toybb.Edit`); see `toybb.api`. Every error toybb raises for
bad input is a `toybb.Error` (kinds and exit codes in `toybb.errors`).
"""

from toybb._version import __version__  # noqa: F401
from toybb.errors import (ArgumentTypeError, CheckpointError, ConfigError, EnvironmentFault, Error,  # noqa: F401
                          FolderBusy, ToybbError, TrainingDiverged)


def __getattr__(name: str):  # the entry point loads JAX only when first used
    if name in ("load", "Loaded"):
        from toybb import api

        return getattr(api, name)
    if name == "Edit":
        from toybb.models.sites import Edit

        return Edit
    raise AttributeError(f"module 'toybb' has no attribute {name!r}")


__all__ = ["load", "Loaded", "Edit", "Error", "ConfigError", "ArgumentTypeError", "CheckpointError", "FolderBusy",
           "TrainingDiverged", "EnvironmentFault", "__version__"]


def __dir__() -> list[str]:  # the lazy names (load, Loaded, Edit) too
    return sorted(set(globals()) | set(__all__))
