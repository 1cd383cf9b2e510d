"""kill -9 at random moments: `toybb train` and `toybb sweep` rerun after each kill end with exactly the
tables of an uninterrupted run, every run x step once (3 kill points by default, 20 under -m slow)."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest


ROOT = Path(__file__).resolve().parents[1]
# the shapes of tests/test_reliability.py (one sgd run, d 16, T 8): one compilation cache serves both
TRAIN = ["train", "--d-model", "16", "--seq-len", "8", "--batch", "4", "--eval-batch", "4", "--steps", "40",
         "--eval-every", "1", "--ckpt-every", "3", "--seeds", "1", "--optimizer", "sgd", "--lr", "0.5",
         "--no-progress", "--no-plot"]


def _env() -> dict[str, str]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def _run(argv, env, kill_after: float | None = None) -> tuple[int | None, str]:
    """Run `toybb ARGV`; with kill_after, SIGKILL it after that many seconds. (exit code or None if killed, stderr)."""
    p = subprocess.Popen([sys.executable, "-m", "toybb.cli", *argv], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    if kill_after is not None:
        try:
            p.wait(kill_after)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
            return None, p.stderr.read()
    err = p.communicate()[1]
    return p.returncode, err


def _kill_and_resume(argv_of, env, n_kills: int, seconds: float, seed: int) -> list[float]:
    """Kill runs of argv_of() at n_kills random moments in (0, seconds), then run it to the end."""
    rng = np.random.default_rng(seed)
    killed: list[float] = []
    while len(killed) < n_kills:
        t = float(rng.uniform(0.0, seconds))
        code, err = _run(argv_of(), env, kill_after=t)
        assert "Traceback" not in err, err
        if code is None:
            killed.append(round(t, 2))
        else:  # the run ended before the kill: it must have succeeded
            assert code == 0, err
    code, err = _run(argv_of(), env)
    assert code == 0 and "Traceback" not in err, err
    return killed


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text(), newline="")))


@pytest.fixture(scope="module")
def env():
    return _env()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env):
    """An uninterrupted run (also fills the compilation cache) and its wall time."""
    out = tmp_path_factory.mktemp("ref") / "run"
    t0 = time.perf_counter()
    code, err = _run([*TRAIN, "--out", str(out)], env)
    assert code == 0, err
    return out, time.perf_counter() - t0


def _check_train(reference, tmp_path, env, n_kills):
    ref, seconds = reference
    out = tmp_path / "run"
    killed = _kill_and_resume(lambda: [*TRAIN, "--out", str(out)], env, n_kills, seconds, seed=n_kills)
    assert (out / "metrics.csv").read_bytes() == (ref / "metrics.csv").read_bytes(), killed
    rows = _rows(out / "metrics.csv")
    keys = [(r["step"], r["seed"], r["lr"]) for r in rows]
    assert len(keys) == len(set(keys)) == 41  # every run x step once
    for name in ("active_dormant.csv", "interventions.csv"):
        assert (out / name).read_bytes() == (ref / name).read_bytes()
    s, r = (json.loads((d / "summary.json").read_text()) for d in (out, ref))
    assert s["final_per_run"] == r["final_per_run"]
    assert not list(out.glob(".*.tmp"))  # what the kills left mid-write is cleaned up by the resumed run


def test_train_kill9_resume(reference, tmp_path, env):
    _check_train(reference, tmp_path, env, 3)


@pytest.mark.slow
def test_train_kill9_resume_many(reference, tmp_path, env):
    _check_train(reference, tmp_path, env, 20)


# two groups of one run each (they differ in train.steps), trained by one compiled program
SWEEP = {"base": {"preset": "cpu", "model": {"d_model": 16}, "task": {"seq_len": 8},
                  "optim": {"name": "sgd", "lr": 0.5},
                  "train": {"batch": 4, "eval_batch": 4, "eval_schedule": [[1, 0]], "ckpt_every": 3}},
         "grid": {"train.steps": [12, 20]}, "seeds": 1}


def _check_sweep(tmp_path, env, n_kills):
    spec = tmp_path / "sweep.json"
    spec.write_text(json.dumps(SWEEP))
    ref = tmp_path / "ref"
    t0 = time.perf_counter()
    code, err = _run(["sweep", str(spec), "--out", str(ref), "--no-progress", "--no-plot"], env)
    assert code == 0, err
    seconds = time.perf_counter() - t0
    out = tmp_path / "killed"
    _kill_and_resume(lambda: ["sweep", str(spec), "--out", str(out), "--no-progress", "--no-plot"], env, n_kills,
                     seconds, seed=100 + n_kills)
    assert (out / "results.csv").read_bytes() == (ref / "results.csv").read_bytes()
    keys = [(r["run_id"], r["step"]) for r in _rows(out / "results.csv")]
    assert len(keys) == len(set(keys)) == 13 + 21  # every run x step (0..12, 0..20) once


@pytest.mark.slow  # kill -9 and resume is guarded by test_train_kill9_resume
def test_sweep_kill9_resume(tmp_path, env):
    _check_sweep(tmp_path, env, 3)


@pytest.mark.slow
def test_sweep_kill9_resume_many(tmp_path, env):
    _check_sweep(tmp_path, env, 20)
