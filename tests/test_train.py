"""Training loop: determinism, resume == uninterrupted, vmapped runs == single runs, divergence,
checkpoint and run-folder errors. One tiny config; compiled functions are shared via a Trainer."""

import csv
import json

import numpy as np
import pytest

from toybb.config import ModelConfig, OptimConfig, RunConfig, TaskConfig, TrainConfig
from toybb.errors import CheckpointError, ConfigError, TrainingDiverged
from toybb.train.loop import train
from toybb.train.trainer import Trainer

TINY = RunConfig(
    model=ModelConfig(d_model=32, max_len=64, n_heads=2),
    task=TaskConfig(seq_len=16),
    optim=OptimConfig(lr=3e-3),
    train=TrainConfig(steps=60, batch=16, seeds=(0, 1), eval_batch=32, eval_schedule=((10, 0),), ckpt_every=20),
)


@pytest.fixture(scope="module")
def trainer():
    return Trainer(TINY)


@pytest.fixture(scope="module")
def full_run(trainer, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    return train(TINY, out, progress=False, trainer=trainer, write_figure=False), out


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_run_folder_contents(full_run):
    result, out = full_run
    for name in ("config.json", "metrics.csv", "checkpoint.npz", "active_dormant.csv", "interventions.csv", "summary.json"):
        assert (out / name).exists(), name
    meta = json.loads((out / "config.json").read_text())
    assert meta["config"]["model"]["d_model"] == 32 and "jax" in meta["versions"]
    rows = _csv(out / "metrics.csv")
    # every run x step exactly once
    assert sorted((int(r["step"]), int(r["seed"])) for r in rows) == sorted(
        (s, seed) for s in TINY.train.eval_steps() for seed in (0, 1))
    assert "sink_attention_l0" in rows[0] and "sink_attention_l0h1" in rows[0] and "residual_peak_l0" in rows[0]
    assert result.metrics["loss"].shape == (len(TINY.train.eval_steps()), 2)
    # training does something: loss falls
    assert (result.metrics["loss"][-1] < result.metrics["loss"][0] - 0.3).all()
    ivs = {r["intervention"] for r in _csv(out / "interventions.csv")}
    assert ivs == {"full", "no_attention", "no_mlp"}
    ad = _csv(out / "active_dormant.csv")
    assert len(ad) == 2 * 65 * 2  # runs x characters x heads
    # the in-text counterpart counts every non-BOS query of a 2^16-token natural sample once per run and head
    one = [r for r in ad if r["seed"] == "0" and r["head"] == "0"]
    assert sum(int(r["natural_count"]) for r in one) == (1 << 16) // TINY.task.seq_len * (TINY.task.seq_len - 1)
    assert all((r["natural_bos_attention"] == "nan") == (r["natural_count"] == "0") for r in ad)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["active_tokens_in_text"]) <= set(summary["active_tokens"])


def test_same_seed_same_numbers(full_run, trainer):
    again = train(TINY, None, progress=False, trainer=trainer)
    for k, v in full_run[0].metrics.items():
        np.testing.assert_array_equal(v, again.metrics[k], err_msg=k)


def test_resume_equals_uninterrupted(full_run, trainer, tmp_path):
    out = tmp_path / "resumed"
    part = train(TINY, out, progress=False, trainer=trainer, stop_after=30, write_figure=False)
    assert part.steps[-1] == 30 and not (out / "summary.json").exists()
    # a fresh Trainer, as a new process would build
    final = train(TINY, out, progress=False, trainer=Trainer(TINY), write_figure=False)
    assert final.steps == full_run[0].steps
    for k, v in full_run[0].metrics.items():
        np.testing.assert_array_equal(v, final.metrics[k], err_msg=k)
    assert _csv(out / "metrics.csv") == _csv(full_run[1] / "metrics.csv")


def test_interrupt_between_checkpoints_resumes_from_last(full_run, trainer, tmp_path):
    out = tmp_path / "mid"
    train(TINY, out, progress=False, trainer=trainer, stop_after=50, write_figure=False)  # ckpt at 40
    # rows are appended at every evaluation; the checkpoint lags behind them
    assert max(int(r["step"]) for r in _csv(out / "metrics.csv")) == 50
    assert int(np.load(out / "checkpoint.npz")["__step__"]) == 40
    # and a torn last line (killed mid-write) is tolerated
    with open(out / "metrics.csv", "a") as f:
        f.write("5")
    final = train(TINY, out, progress=False, trainer=trainer, write_figure=False)
    np.testing.assert_array_equal(final.metrics["loss"], full_run[0].metrics["loss"])
    # resuming truncated the rows past the checkpoint: every run x step exactly once
    assert _csv(out / "metrics.csv") == _csv(full_run[1] / "metrics.csv")


def test_vmapped_runs_equal_single_runs(full_run):
    single = train(TINY.replace(train={"seeds": (1,)}), None, progress=False)
    np.testing.assert_allclose(single.metrics["loss"][:, 0], full_run[0].metrics["loss"][:, 1], rtol=2e-5)


@pytest.mark.parametrize("field, value", [
    pytest.param("run_chunk", 1, marks=pytest.mark.slow),  # runs vmapped one at a time (jax.lax.map over the run axis)
    ("microbatch", 4),  # gradients summed over 4 micro-batches of 4 sequences
])
def test_speed_settings_equal_defaults(full_run, field, value):
    # = all runs vmapped together over the whole batch, to float32 round-off
    cfg = TINY.replace(train={field: value})
    tr = Trainer(cfg)
    assert getattr(tr, field) == value
    other = train(cfg, None, progress=False, trainer=tr)
    np.testing.assert_allclose(other.metrics["loss"], full_run[0].metrics["loss"], rtol=2e-5)
    np.testing.assert_allclose(other.metrics["sink_attention_l0"], full_run[0].metrics["sink_attention_l0"],
                               rtol=1e-4, atol=1e-6)


def test_run_chunk_automatic_and_checked():
    from toybb.config import cpu_preset

    import jax

    if jax.default_backend() == "cpu" and jax.local_device_count() == 1:
        assert Trainer(TINY).run_chunk == 2  # small runs: all vmapped together
        assert Trainer(cpu_preset()).run_chunk == 1  # d 64, batch 64, sequence 64: one run at a time
    with pytest.raises(ConfigError, match="run_chunk"):
        TINY.replace(train={"run_chunk": 0})


def test_microbatch_automatic_and_checked():
    from toybb.config import cpu_preset
    from toybb.train.trainer import microbatch_size

    import jax

    assert microbatch_size(TINY) == 16 and microbatch_size(cpu_preset()) == 64  # small batches stay whole
    if jax.default_backend() == "cpu":  # paper size (d 256, batch 512, sequence 256): cache-sized slices
        assert microbatch_size(RunConfig()) == 8
    for bad in (0, 5, 1.5):
        with pytest.raises(ConfigError, match="microbatch"):
            TINY.replace(train={"microbatch": bad})


def test_learning_rates_vmapped(trainer):
    cfg = TINY.replace(train={"seeds": (0,), "lrs": (3e-3, 1e-4), "steps": 20})
    r = train(cfg, None, progress=False)
    assert r.runs == [(0, 3e-3), (0, 1e-4)]
    # the bigger step size moves further in 20 steps
    assert r.metrics["loss"][-1, 0] < r.metrics["loss"][-1, 1]


def test_divergence_names_step_and_keeps_checkpoint(tmp_path):
    cfg = TINY.replace(optim={"name": "sgd", "lr": 1e12}, train={"steps": 40, "seeds": (0,)})
    with pytest.raises(TrainingDiverged, match=r"NaN/inf at step \d+") as e:
        train(cfg, tmp_path, progress=False)
    assert 0 <= e.value.step < 40 and e.value.runs == [0]
    # diverged before the first checkpoint: none written, metrics only up to the last finite evaluation
    assert e.value.last_good_step is None and not (tmp_path / "checkpoint.npz").exists()
    rows = _csv(tmp_path / "metrics.csv")
    assert rows and all(int(r["step"]) <= e.value.step for r in rows)
    assert all(np.isfinite(float(r["loss"])) for r in rows)


def test_rerun_with_other_config_is_refused(full_run):
    _, out = full_run
    with pytest.raises(ConfigError, match="another config"):
        train(TINY.replace(model={"d_model": 64}), out, progress=False)


def test_corrupt_checkpoint_is_a_clear_error(full_run, tmp_path):
    out = tmp_path / "bad"
    out.mkdir()
    for name in ("config.json", "metrics.csv"):
        (out / name).write_text((full_run[1] / name).read_text())
    (out / "checkpoint.npz").write_bytes((full_run[1] / "checkpoint.npz").read_bytes()[:500])
    with pytest.raises(CheckpointError, match="unreadable"):
        train(TINY, out, progress=False)


def test_longer_run_continues_from_finished_one(full_run, trainer, tmp_path):
    out = tmp_path / "cont"
    short = TINY.replace(train={"steps": 30})
    train(short, out, progress=False, trainer=trainer, write_figure=False)
    longer = train(TINY, out, progress=False, trainer=trainer, write_figure=False)  # same compiled functions
    np.testing.assert_array_equal(longer.metrics["loss"], full_run[0].metrics["loss"])
