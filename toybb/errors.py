"""toybb's errors: one hierarchy, `toybb.Error` and its kinds, each with the exit code the CLI ends with
after printing the message as one line on stderr.

    Error (ToybbError)          bad input                                      exit 2
      ConfigError               an invalid value (flag, config field, argument, file contents, path)
        ArgumentTypeError       an argument of the wrong type (Python API)
      CheckpointError           a checkpoint that cannot be read or does not match the run
      FolderBusy                another process writes the same folder
      TrainingDiverged          the loss became NaN/inf                        exit 3
      EnvironmentFault          the machine cannot run it: a missing platform,  exit 4
                                an impossible device count, a full disk, an I/O error
"""

from __future__ import annotations

import errno

EXIT_INPUT, EXIT_DIVERGED, EXIT_ENVIRONMENT = 2, 3, 4


class Error(Exception):
    """Base class of every toybb error; the message says what is wrong and what to do."""

    exit_code = EXIT_INPUT


ToybbError = Error  # former name


class ConfigError(Error, ValueError):
    """An invalid configuration value; the message names the field and how to fix it."""


class ArgumentTypeError(ConfigError, TypeError):
    """An argument of the wrong type given to the Python API."""


class CheckpointError(Error):
    """A checkpoint that cannot be read or does not match the run's config."""


class FolderBusy(Error):
    """Another process holds the lock of a folder toybb writes (one writer per folder)."""


class EnvironmentFault(Error):
    """The machine cannot run the command: a missing platform, an impossible device count, a full disk."""

    exit_code = EXIT_ENVIRONMENT


class TrainingDiverged(Error):
    """The loss became NaN or inf. The last good checkpoint is kept."""

    exit_code = EXIT_DIVERGED

    def __init__(self, step: int, runs: list[int], last_good_step: int | None, out_dir: str | None,
                 what: str | None = None):
        self.step, self.runs, self.last_good_step = step, runs, last_good_step
        where = ("" if not out_dir else f"; last good checkpoint (step {last_good_step}) kept in {out_dir}"
                 if last_good_step is not None else f"; no checkpoint of {out_dir} was written before")
        who = f"{what}: " if what else ""
        of = f" (runs {runs})" if runs else ""
        super().__init__(
            f"{who}loss became NaN/inf at step {step}{of}{where}. "
            "Lower the learning rate (--lr) or check the config."
        )


_ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO)


def os_error(e: OSError) -> Error:
    """An OSError of the filesystem as one toybb error naming the path and what to do: a full disk or an
    I/O error is an EnvironmentFault (exit 4), a bad path (too long, a symlink loop, read-only, a folder
    where a file should be) a ConfigError (exit 2)."""
    path = str(e.filename) if e.filename is not None else "a file"
    path = path if len(path) <= 80 else path[:77] + "..."
    what = e.strerror or str(e)
    if e.errno in _ENVIRONMENT_ERRNOS:
        return EnvironmentFault(f"cannot write {path!r}: {what}; free space (or fix the disk) and rerun "
                                "the same command (a run resumes from its last checkpoint)")
    fix = {errno.ENAMETOOLONG: "give a shorter name",
           errno.ELOOP: "the path is a symlink loop; give a real folder",
           errno.EISDIR: "a folder stands where a file should be; remove it or give another path",
           errno.ENOTDIR: "a file stands where a folder should be; give another path",
           errno.EROFS: "the filesystem is read-only; give another path",
           errno.EACCES: "give a path you may write",
           errno.EPERM: "give a path you may write",
           errno.ENOENT: "the path (or a symlink's target) does not exist; give another path"}
    return ConfigError(f"{path!r}: {what}; {fix.get(e.errno, 'give another path')}")
