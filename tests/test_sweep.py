"""Sweeps: grouping, an interrupted sweep resumes to the same table (every run x step once), 4 forced
CPU devices give the numbers of one, bad sweep files fail before training with one line and exit 2."""

import csv
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from toybb.cli import main
from toybb.errors import ConfigError
from toybb.train import loop
from toybb.train.memory import estimate_group_bytes
from toybb.train.sweep import plan_sweep, run_sweep

from _shared import TINY, TINY_BASE, TRAINERS
# 4 runs in 2 groups; the groups differ only in train.steps, so they share one compiled Trainer
SPEC = {"base": TINY_BASE, "seeds": [0, 1], "grid": {"train.steps": [10, 20], "optim.lr": [3e-3]}}


def _table(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trainers():
    return TRAINERS


@pytest.fixture(scope="module")
def reference(tmp_path_factory, trainers):
    plan = plan_sweep(SPEC)
    out = tmp_path_factory.mktemp("ref")
    return _table(run_sweep(plan, out, progress=False, write_figure=False, trainers=trainers))


def test_plan_groups_and_run_ids():
    spec = {"base": TINY_BASE, "seeds": 2,
            "grid": {"optim.lr": [1e-3, 3e-3], "model.attention": ["softmax", "relu"]},
            "list": [{"optim.name": "adam"}, {"optim.name": "sgd", "model.n_layers": 2}]}
    plan = plan_sweep(spec)
    assert len(plan.runs) == 16 and len({r.run_id for r in plan.runs}) == 16
    # seeds x lrs vmapped: 2 optimisers/depths x 2 attentions
    assert len(plan.groups) == 4 and all(g.n_runs == 4 for g in plan.groups)
    assert plan.keys == ["optim.name", "optim.lr", "model.attention", "model.n_layers"]
    g = plan.groups[0]
    assert list(g.runs) == g.cfg.runs()  # the Trainer's run axis order
    # a list whose (seed, lr) pairs are no full product is split per learning rate
    ragged = plan_sweep({"base": TINY_BASE, "list": [{"optim.lr": 1e-3, "seed": 0}, {"optim.lr": 2e-3, "seeds": [0, 1]}]})
    assert sorted(g.n_runs for g in ragged.groups) == [1, 2]


def test_sweep_table_has_every_run_and_step_once(reference):
    plan = plan_sweep(SPEC)
    assert plan.groups[0].cfg.replace(train={"steps": 10}) == TINY.replace(train={"steps": 10})  # shared compile
    keys = [(r["run_id"], int(r["step"])) for r in reference]
    assert len(keys) == len(set(keys))
    expected = {(r.run_id, s) for r in plan.runs for s in r.cfg.train.eval_steps()}
    assert set(keys) == expected
    assert {r["train.steps"] for r in reference} == {"10", "20"}
    assert all(np.isfinite(float(r["loss"])) for r in reference)


def test_interrupted_after_a_group_resumes(tmp_path, reference, trainers):
    plan = plan_sweep(SPEC)

    def crash(group):
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        run_sweep(plan, tmp_path, progress=False, write_figure=False, trainers=trainers, after_group=crash)
    done = [g.name for g in plan.groups if (tmp_path / "groups" / g.name / "done").exists()]
    assert len(done) == 1 and not (tmp_path / "results.csv").exists()
    mtime = (tmp_path / "groups" / done[0] / "metrics.csv").stat().st_mtime_ns
    assert _table(run_sweep(plan, tmp_path, progress=False, write_figure=False, trainers=trainers)) == reference
    assert (tmp_path / "groups" / done[0] / "metrics.csv").stat().st_mtime_ns == mtime  # not redone


def test_keyboard_interrupt_mid_group_resumes(tmp_path, reference, trainers, monkeypatch):
    plan = plan_sweep(SPEC)
    calls = {"n": 0}
    real = loop.append_metrics_csv

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:  # second group, after its first checkpoint (step 5) and one more row
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(loop, "append_metrics_csv", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(plan, tmp_path, progress=False, write_figure=False, trainers=trainers)
    monkeypatch.setattr(loop, "append_metrics_csv", real)
    assert _table(run_sweep(plan, tmp_path, progress=False, write_figure=False, trainers=trainers)) == reference


def test_multi_host_split_process_zero_writes_the_table(tmp_path, reference, trainers):
    plan = plan_sweep(SPEC)
    # process 1 of 2 trains the odd groups and writes no table
    assert run_sweep(plan, tmp_path, progress=False, write_figure=False, trainers=trainers, process=(1, 2)) is None
    done = sorted(p.parent.name for p in tmp_path.glob("groups/*/done"))
    assert done == [plan.groups[1].name] and not (tmp_path / "results.csv").exists()
    path = run_sweep(plan, tmp_path, progress=False, write_figure=False, trainers=trainers, process=(0, 2),
                     wait_timeout=60)
    assert _table(path) == reference


def test_other_sweep_in_same_folder_is_refused(tmp_path, trainers):
    run_sweep(plan_sweep({**SPEC, "grid": {"train.steps": [10], "optim.lr": [3e-3]}}), tmp_path, progress=False,
              write_figure=False, trainers=trainers)
    with pytest.raises(ConfigError, match="another sweep"):
        run_sweep(plan_sweep({**SPEC, "seeds": [5]}), tmp_path, progress=False, write_figure=False, trainers=trainers)


def test_memory_estimate_grows_with_runs_and_width():
    small = plan_sweep({"base": TINY_BASE, "seeds": 1, "grid": {"optim.lr": [1e-3]}}).groups[0].cfg
    many = small.replace(train={"seeds": tuple(range(8))})
    wide = small.replace(model={"d_model": 64})
    b = estimate_group_bytes(small)
    assert estimate_group_bytes(many) == 8 * b and estimate_group_bytes(wide) > 4 * b
    # runs trained one at a time (train.run_chunk 1) hold one run's training activations
    big_batch = small.replace(train={"seeds": tuple(range(8)), "batch": 512, "eval_batch": 8})
    assert estimate_group_bytes(big_batch.replace(train={"run_chunk": 1})) < estimate_group_bytes(
        big_batch.replace(train={"run_chunk": 8})) / 4


@pytest.mark.parametrize("text, needle", [
    ("base: {model: {d_model: 16}\ngrid: [", "malformed"),
    ("grid: {model.colour: [1, 2]}", "unknown field(s) ['colour']"),
    ("grid: {modle.d_model: [16]}", "unknown sweep key 'modle.d_model'"),
    ("grid: {}", "non-empty mapping"),
    ("grid: {optim.lr: []}", "non-empty list"),
    ("base: {preset: cpu}", "needs a `grid:`"),
    ("grid: {optim.lr: [-1.0]}", "optim.lr"),
    ("colour: blue\ngrid: {optim.lr: [0.1]}", "unknown top-level"),
    ("seeds: 16\ngrid: {model.d_model: [65536], model.n_layers: [8]}", "GiB"),
])
def test_bad_sweep_files_fail_before_training(tmp_path, capsys, text, needle):
    f = tmp_path / "sweep.yaml"
    f.write_text(text)
    assert main(["sweep", str(f), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


SCRIPT = textwrap.dedent("""
    import csv, json, sys, jax
    from toybb.train.sweep import plan_sweep, run_sweep
    spec = json.loads(sys.argv[2])
    path = run_sweep(plan_sweep(spec), sys.argv[1], progress=False, write_figure=False, log=lambda s: None)
    cfg = json.load(open(next(iter(__import__("pathlib").Path(sys.argv[1]).glob("groups/*/config.json")))))
    rows = list(csv.DictReader(open(path)))
    print(json.dumps({"devices": jax.local_device_count(), "versions_devices": cfg["versions"]["devices"],
                      "loss": [float(r["loss"]) for r in rows], "peak": [float(r["residual_peak_l0"]) for r in rows],
                      "ids": [(r["run_id"], r["step"]) for r in rows]}))
""")


def _start(n_devices, out):
    spec = {"base": {**TINY_BASE, "train": {**TINY_BASE["train"], "steps": 10}}, "seeds": [0, 1],
            "grid": {"optim.lr": [1e-3, 3e-3]}}
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={n_devices}")
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(out), json.dumps(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _result(proc):
    out, err = proc.communicate()
    assert proc.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow  # 56 s; the 4-device Trainer itself is checked in the default suite (test_sharding.py)
def test_four_devices_same_sweep_numbers(tmp_path):
    procs = [_start(1, tmp_path / "one"), _start(4, tmp_path / "four")]  # concurrently: two cores
    one, four = (_result(p) for p in procs)
    assert one["devices"] == 1 and four["devices"] == 4 and four["versions_devices"].count("CpuDevice") == 4
    assert one["ids"] == four["ids"] and len(one["ids"]) == 4 * 3
    np.testing.assert_allclose(four["loss"], one["loss"], rtol=1e-5)
    np.testing.assert_allclose(four["peak"], one["peak"], rtol=1e-5)
