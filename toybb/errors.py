"""User-facing errors. The CLI prints these as one line and exits with code 2 (3 for divergence)."""


class ToybbError(Exception):
    """Base class for errors caused by user input (config, checkpoint, text, CLI argument)."""


class ConfigError(ToybbError, ValueError):
    """An invalid configuration value; the message names the field and how to fix it."""


class CheckpointError(ToybbError):
    """A checkpoint that cannot be read or does not match the run's config."""


class TrainingDiverged(ToybbError):
    """The loss became NaN or inf. The last good checkpoint is kept."""

    def __init__(self, step: int, runs: list[int], last_good_step: int | None, out_dir: str | None):
        self.step, self.runs, self.last_good_step = step, runs, last_good_step
        where = f"; last good checkpoint (step {last_good_step}) kept in {out_dir}" if out_dir else ""
        super().__init__(
            f"loss became NaN/inf at step {step} (runs {runs}){where}. "
            "Lower the learning rate (--lr) or check the config."
        )
