"""Files toybb writes and reads back: one writer per folder (`folder_lock`), atomic writes, whole-row appends,
CSV tables (a run's metrics.csv), the package versions a record carries, and readers of JSON/CSV records
that turn bad input (missing, not UTF-8, malformed, torn by a killed process) into one-line `ConfigError`s.

A reader never sees a partial file: whole files are written to a temporary name and renamed; table rows
are appended with one `write` of whole lines, and readers drop a last line without its newline (the
tail of a row torn by a crash).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import json
import math
import os
import socket
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import numpy as np

from toybb._version import __version__ as toybb_version
from toybb.names import read_columns

from toybb.errors import ConfigError, FolderBusy, os_error

LOCK_NAME = ".toybb.lock"
_held: dict[str, int] = {}  # real path of a folder this process has locked -> depth of nested holds


@contextlib.contextmanager
def folder_lock(folder: str | Path) -> Iterator[Path]:
    """`with folder_lock(out):` one writer per folder. Creates `folder`, takes an exclusive `flock` on
    `folder/.toybb.lock` (which names the holder's pid and host) or raises FolderBusy naming them. The
    kernel drops the lock when its process ends, even by kill -9, so a stale lock file is simply taken
    over. Nested holds in one process are free. On release the lock file goes, and a folder this call
    created is removed again if nothing was written to it."""
    d = Path(folder)
    created = not d.exists()
    d.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(d)
    if key in _held:
        _held[key] += 1
        try:
            yield d
        finally:
            _held[key] -= 1
        return
    fd = _lock_file(d)
    _held[key] = 1
    try:
        yield d
    finally:
        del _held[key]
        if fd is not None:  # unlinked while held: a process that opened it meanwhile sees a new inode and retries
            (d / LOCK_NAME).unlink(missing_ok=True)
            os.close(fd)
        if created and not any(d.iterdir()):
            d.rmdir()


def _lock_file(d: Path) -> int | None:
    path = d / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown pid"
            os.close(fd)
            raise FolderBusy(f"{d} is being written by another toybb process ({holder}); wait for it to end, "
                             "stop it, or use another --out") from None
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                return None  # a filesystem without locks: write unlocked rather than not at all
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # locked a file its holder unlinked on release: take the new one
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return fd


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", newline: str | None = None) -> Iterator[IO]:
    """`with atomic_open(path) as f:` writes a temporary file in the same folder, fsyncs it and renames
    it over `path` when the block ends without an exception (else deletes it). A failing write (a full disk,
    a read-only place) is a toybb error (`toybb.errors.os_error`) naming `path`, from the library as from the CLI."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:  # name the file asked for, not the temporary one
        raise os_error(OSError(e.errno, e.strerror, str(path))) from e
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": newline, "encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise os_error(OSError(e.errno, e.strerror, str(path) if e.filename in (None, tmp) else e.filename)) from e
        raise


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Call write(f) on a file opened with `atomic_open`."""
    with atomic_open(path, mode) as f:
        write(f)


def remove_temporaries(folder: str | Path) -> None:
    """Delete what `atomic_write` left behind in `folder` when its process was killed mid-write (call it
    holding `folder_lock`: then no other process is writing there)."""
    for p in Path(folder).glob(".*.tmp"):
        p.unlink(missing_ok=True)


def append_lines(path: str | Path, text: str) -> None:
    """Append whole lines (`text` ends with a newline) in one write on an O_APPEND descriptor, so a
    killed process leaves either all of them or none (a crash of the machine at most a last line
    without newline, which `read_csv` drops)."""
    data = text.encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as e:
        raise os_error(e) from e
    start = os.fstat(fd).st_size
    try:
        view = memoryview(data)
        while view:  # a regular file takes the whole buffer in one call; loop only for safety
            view = view[os.write(fd, view):]
    except OSError as e:  # a full disk mid-write: take the partial lines back
        os.ftruncate(fd, start)
        raise os_error(OSError(e.errno, e.strerror, str(path))) from e
    finally:
        os.close(fd)


def read_text(path: str | Path, what: str = "file") -> str:
    """The UTF-8 text of `path`; a missing, unreadable or binary file is a ConfigError naming it."""
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} {str(p)!r} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {str(p)!r} is a folder; give a file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {str(p)!r} is not UTF-8 text; give a text file") from None
    except OSError as e:
        raise ConfigError(f"{what} {str(p)!r} cannot be read ({e.strerror})") from None


def read_json(path: str | Path, what: str = "file", fix: str = "delete it or give another one") -> Any:
    """The JSON document in `path`; errors name the file and say what to do (`fix`)."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what} {str(path)!r} is not valid JSON ({e.msg} at line {e.lineno}); {fix}") from None


def package_versions() -> dict[str, str]:
    """Versions of Python, toybb and its numerical packages, the platform and the devices (for run records)."""
    import platform

    import flax
    import jax
    import jaxlib
    import optax

    return {
        "python": platform.python_version(),
        "toybb": toybb_version,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "backend": jax.default_backend(),
        "devices": str(jax.devices()),
    }


def write_csv_rows(path: str | Path, rows: list[dict], fieldnames: list[str] | None = None) -> None:
    """A CSV table of dict rows, written atomically; columns `fieldnames`, by default every key in order
    of first appearance (a row without a column leaves it empty). No rows and no fieldnames: nothing is written."""
    if fieldnames is None:
        if not rows:
            return
        fieldnames = list(dict.fromkeys(k for r in rows for k in r))

    def write(f):
        w = csv.DictWriter(f, fieldnames=fieldnames, restval="")
        w.writeheader()
        w.writerows(rows)

    atomic_write(path, write, mode="w")


def _metrics_lines(names: list[str], runs, step: int, m: dict[str, np.ndarray]) -> list[list[str]]:
    return [[str(step), str(seed), f"{lr:g}", *(f"{float(m[n][r]):.9g}" for n in names)]
            for r, (seed, lr) in enumerate(runs)]


def write_metrics_csv(path: Path, names: list[str], runs, steps: list[int], rows: list[dict[str, np.ndarray]]) -> None:
    """metrics.csv of a run folder: header step, seed, lr, *names, then one row per (step, run)."""
    def write(f):
        w = csv.writer(f)
        w.writerow(["step", "seed", "lr", *names])
        for step, m in zip(steps, rows):
            w.writerows(_metrics_lines(names, runs, step, m))

    atomic_write(path, write, mode="w")


def append_metrics_csv(path: Path, names: list[str], runs, step: int, m: dict[str, np.ndarray]) -> None:
    """Append one evaluation step's rows in one write (a resumed run truncates to its checkpoint's step first)."""
    buf = io.StringIO()
    csv.writer(buf).writerows(_metrics_lines(names, runs, step, m))
    append_lines(path, buf.getvalue())


def read_metrics_csv(path: Path, names: list[str], runs, upto: int) -> tuple[list[int], list[dict[str, np.ndarray]]]:
    """(steps, rows {name: values [runs]}) of the complete evaluation steps <= upto in a metrics.csv
    (a step lacking a run, a torn or incomplete row is left out); nothing when the file is missing."""
    steps: list[int] = []
    rows: list[dict[str, np.ndarray]] = []
    if not path.exists():
        return steps, rows
    by_step: dict[int, list[dict[str, str]]] = {}
    for row in read_csv(path, "metrics table"):  # drops a torn last line
        if any(row.get(k) in (None, "") for k in ("step", "seed", *names)):
            continue
        try:
            s = int(row["step"])
        except ValueError:
            continue
        if s <= upto:
            by_step.setdefault(s, []).append(row)
    for s in sorted(by_step):
        group = by_step[s]
        if len(group) != len(runs):
            continue
        steps.append(s)
        rows.append({n: np.array([float(g[n]) for g in group], np.float32) for n in names})
    return steps, rows


def read_run_config(run_dir: str | Path) -> dict:
    """The `config.json` of a `toybb train` folder, checked to hold a config mapping."""
    path = Path(run_dir) / "config.json"
    fix = f"rerun `toybb train --out {run_dir}` or delete the folder"
    meta = read_json(path, "run config", fix)
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict) or not all(
            isinstance(meta["config"].get(s), dict) for s in ("model", "task", "optim", "train")):
        raise ConfigError(f"run config {str(path)!r} has no config with sections model/task/optim/train; {fix}")
    return meta


def read_csv(path: str | Path, what: str = "table", required: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """Rows of a CSV table with a header. A last line without newline (torn by an interruption) and
    rows with missing or extra fields are dropped; `required` columns must be in the header."""
    text = read_text(path, what)
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = reader.fieldnames or []
        rows = [r for r in reader if None not in r and None not in r.values()]
        current = read_columns(header, str(path))  # old run folders: old column names read as the new ones
        if current != header:
            rows = [dict(zip(current, r.values())) for r in rows]
            header = current
    except csv.Error as e:
        raise ConfigError(f"{what} {str(path)!r} is not a CSV table ({e}); delete it or rerun the command") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise ConfigError(f"{what} {str(path)!r} lacks the column(s) {missing}; it is not a toybb table")
    return rows


def load_metrics(run_dir: str | Path) -> tuple[dict, list[dict[str, str]]]:
    """(config.json contents, metrics.csv rows) of a run folder written by `toybb train`."""
    d = Path(run_dir)
    if not (d / "metrics.csv").is_file() or not (d / "config.json").is_file():
        raise ConfigError(f"{d} is not a toybb run folder (no metrics.csv/config.json); give the --out of `toybb train`")
    meta = read_run_config(d)
    rows = read_csv(d / "metrics.csv", "metrics table", required=("step", "seed", "lr"))
    seen = set()
    for r in rows:
        try:
            key = int(r["step"]), int(r["seed"]), float(r["lr"])
        except ValueError:
            raise ConfigError(f"metrics table {str(d / 'metrics.csv')!r} has a row whose step, seed or lr is not a "
                              f"number ({r['step']!r}, {r['seed']!r}, {r['lr']!r}); repair or delete it") from None
        if not all(-2**63 <= v < 2**63 for v in key[:2]):  # beyond any step or seed a run has (numpy's int64)
            raise ConfigError(f"metrics table {str(d / 'metrics.csv')!r} has a row whose step or seed is out of range "
                              f"({r['step']!r}, {r['seed']!r}); repair or delete it")
        if key in seen:  # one row per (step, run): a second one means a second writer, or an edited table
            raise ConfigError(f"metrics table {str(d / 'metrics.csv')!r} holds step {key[0]} of run seed {key[1]}, "
                              f"lr {r['lr']} twice; rerun `toybb train` into a new folder")
        seen.add(key)
    return meta, rows


def seed_table(rows: list[dict[str, str]], metrics: list[str], lr: str | None = None
               ) -> tuple[np.ndarray, list[str], dict[str, np.ndarray]]:
    """metrics.csv rows (those of learning rate `lr`, as written, when given) as (steps, seeds,
    {metric: values [steps, seeds]}), steps and seeds in numeric order; a missing, empty or
    non-numeric field is NaN."""
    sub = rows if lr is None else [r for r in rows if r["lr"] == lr]
    steps = sorted({int(r["step"]) for r in sub})
    seeds = sorted({r["seed"] for r in sub}, key=int)
    si, ki = {s: i for i, s in enumerate(steps)}, {s: i for i, s in enumerate(seeds)}
    vals = {m: np.full((len(steps), len(seeds)), np.nan) for m in metrics}
    for r in sub:
        for m in metrics:
            try:
                vals[m][si[int(r["step"])], ki[r["seed"]]] = float(r[m])
            except (KeyError, TypeError, ValueError):
                pass
    return np.array(steps, dtype=int), seeds, vals


def out_folder(path: str | Path, flag: str = "--out") -> Path:
    """Check that `path` can be an output folder (an existing folder, or creatable) without creating it."""
    if not str(path).strip():
        raise ConfigError(f"{flag} is empty; give a folder path")
    try:
        return _out_folder(Path(path), flag)
    except OSError as e:  # a name too long, a path through a file, ...
        raise ConfigError(f"{flag} {os_error(e)}") from None


def _out_folder(p: Path, flag: str) -> Path:
    if p.is_symlink() and not p.exists():
        raise ConfigError(f"{flag} {str(p)!r} is a symlink to a missing target or a symlink loop; "
                          "remove it or give another path")
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{flag} {str(p)!r} is an existing file, not a folder; give a folder path")
    q = p
    while not q.exists():
        if q.is_symlink():
            raise ConfigError(f"{flag} {str(p)!r}: {str(q)!r} is a symlink to a missing target or a symlink loop; "
                              "give another path")
        if q.parent == q:
            break
        q = q.parent
    if q.exists() and not q.is_dir():
        raise ConfigError(f"{flag} {str(p)!r}: {str(q)!r} is a file, not a folder; give another path")
    if q.exists() and not os.access(q, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {str(p)!r}: folder {str(q)!r} is not writable; give another path")
    return p


def figure_path(path: str | Path, flag: str = "--out") -> Path:
    """Check an image path before drawing: an existing folder and an extension matplotlib can write."""
    from matplotlib.backend_bases import FigureCanvasBase

    if not str(path).strip():
        raise ConfigError(f"{flag} is empty; give an image file name such as dynamics.png")
    p = Path(path)
    kinds = FigureCanvasBase.get_supported_filetypes()
    ext = p.suffix.lstrip(".").lower()
    if ext not in kinds:
        raise ConfigError(f"{flag} {str(p)!r}: unknown image type {p.suffix or '(none)'!r}; "
                          f"end the name with one of .{', .'.join(sorted(kinds))}")
    if p.is_dir():
        raise ConfigError(f"{flag} {str(p)!r} is a folder; give an image file name")
    if not p.parent.is_dir():
        raise ConfigError(f"{flag} {str(p)!r}: folder {str(p.parent)!r} does not exist; create it first")
    if not os.access(p.parent, os.W_OK | os.X_OK) or p.exists() and not os.access(p, os.W_OK):
        raise ConfigError(f"{flag} {str(p)!r} is read-only; give an image path you may write")
    return p


def save_figure(fig, path: str | Path, **kwargs) -> Path:
    """fig.savefig, written atomically (the format from the extension)."""
    p = Path(path)
    atomic_write(p, lambda f: fig.savefig(f, format=p.suffix.lstrip(".").lower() or "png", **kwargs))
    return p


def finite(value: float | None, flag: str, *, positive: bool = False, minimum: float | None = None) -> None:
    """A numeric flag must be a finite number (and > 0 / >= minimum)."""
    if value is None:
        return
    if not math.isfinite(value) or (positive and value <= 0) or (minimum is not None and value < minimum):
        need = "a positive number" if positive else f"a number >= {minimum:g}" if minimum is not None else "a finite number"
        raise ConfigError(f"{flag} must be {need}, got {value!r}")
