"""Issue 15: bad input is one line on stderr with exit code 2 (never a traceback, validated before any
model is loaded or compiled), torn files are read safely, divergence exits with 3."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from toybb.cli import main

# one tiny shape for every run of this module (sgd: a large --lr diverges after a few steps)
TINY = ["--d-model", "16", "--seq-len", "8", "--batch", "4", "--eval-batch", "4", "--steps", "12",
        "--eval-every", "1", "--ckpt-every", "1", "--seeds", "1", "--optimizer", "sgd", "--no-progress", "--no-plot"]


def _tiny(**flags) -> list[str]:
    """TINY with some flags' values replaced (a flag given twice is an error): _tiny(d_model=32)."""
    out = list(TINY)
    for k, v in flags.items():
        out[out.index("--" + k.replace("_", "-")) + 1] = str(v)
    return out


def run_cli(argv, capsys) -> tuple[int, list[str]]:
    """(exit code, stderr lines) of `toybb ARGV` in this process."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err.strip().splitlines()


def one_line_error(argv, capsys, *needles) -> str:
    code, err = run_cli(argv, capsys)
    assert code == 2 and len(err) == 1, (code, err)
    for n in needles:
        assert n in err[0], err
    return err[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished tiny run (10 evaluations, 2 seeds) shared by the tests that read run folders."""
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", *TINY, "--lr", "0.5", "--out", str(out)]) == 0
    return out


def _copy(run_dir, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(run_dir, d)
    return d


def _tear(csv_path):
    """Append a partial row, as a process killed in the middle of a write would leave it."""
    with open(csv_path, "a") as f:
        f.write("22,0,0.004,2.1")


# ---- run folders: plot, theory, series, toy_sinks ------------------------------------------------------
def test_plot_torn_metrics_row_is_ignored(run_dir, tmp_path, capsys):
    d = _copy(run_dir, tmp_path)
    _tear(d / "metrics.csv")
    code, err = run_cli(["plot", str(d), "--out", str(tmp_path / "x.png")], capsys)
    assert code == 0 and (tmp_path / "x.png").stat().st_size > 1000, err


def test_plot_invalid_config_json(run_dir, tmp_path, capsys):
    d = _copy(run_dir, tmp_path)
    (d / "config.json").write_text('{"config": ')
    one_line_error(["plot", str(d)], capsys, "config.json", "not valid JSON")


@pytest.mark.parametrize("name, needle", [("missing/x.png", "does not exist"), ("x.xyz", "unknown image type"),
                                          ("x", "unknown image type")])
def test_plot_bad_out(run_dir, tmp_path, capsys, name, needle):
    one_line_error(["plot", str(run_dir), "--out", str(tmp_path / name)], capsys, "--out", needle)
    assert not (tmp_path / name).exists()


def test_theory_trained_torn_csv(run_dir, tmp_path, capsys):
    d = _copy(run_dir, tmp_path)
    _tear(d / "metrics.csv")
    code, err = run_cli(["theory", "--trained", str(d)], capsys)
    assert code == 0, err


def test_series_broken_config(run_dir, tmp_path, capsys):
    d = _copy(run_dir, tmp_path)
    (d / "config.json").write_bytes(b"\x00{broken")
    one_line_error(["series", str(run_dir), str(d), "--out", str(tmp_path / "s")], capsys, "config.json")


def test_toy_sinks_missing_dir(tmp_path, capsys):
    from toybb.toy_sinks import main as toy_sinks_main

    assert toy_sinks_main([str(tmp_path / "missing_dir")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing_dir" in err[0] and "toybb train" in err[0], err


def test_reader_drops_torn_and_short_rows(tmp_path):
    from toybb.records import read_csv

    p = tmp_path / "t.csv"
    p.write_text("step,seed,lr,loss\r\n0,0,0.1,2.5\r\n2,0\r\n4,0,0.1,2.4\r\n6,0,0.1,2.")
    assert [r["step"] for r in read_csv(p)] == ["0", "4"]


# ---- train ---------------------------------------------------------------------------------------------------
def test_train_config_not_utf8(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_bytes(b"\xff\xfe\x00model: {}")
    one_line_error(["train", "--config", str(p), "--out", str(tmp_path / "o")], capsys, "c.yaml", "UTF-8")


def test_train_out_is_a_file_fails_before_compiling(tmp_path, capsys, monkeypatch):
    import toybb.train.loop as loop

    def no_compile(*a, **k):
        raise AssertionError("compiled before validating --out")

    monkeypatch.setattr(loop, "Trainer", no_compile)
    (tmp_path / "f").write_text("x")
    one_line_error(["train", *TINY, "--out", str(tmp_path / "f")], capsys, "--out", "not a folder")
    one_line_error(["train", *TINY, "--out", str(tmp_path / "f" / "sub")], capsys, "--out", "is a file")


def test_train_model_too_large_fails_before_compiling(tmp_path, capsys, monkeypatch):
    import toybb.train.loop as loop

    monkeypatch.setattr(loop, "Trainer", lambda *a, **k: pytest.fail("compiled a model that cannot fit"))
    one_line_error(["train", *_tiny(d_model=65536), "--out", str(tmp_path / "big")], capsys,
                   "needs about", "GiB", "smaller model")
    assert not (tmp_path / "big" / "config.json").exists()


def test_train_into_another_runs_folder_fails_before_compiling(run_dir, tmp_path, capsys, monkeypatch):
    import toybb.train.loop as loop

    d = _copy(run_dir, tmp_path)
    monkeypatch.setattr(loop, "Trainer", lambda *a, **k: pytest.fail("compiled before checking the run folder"))
    one_line_error(["train", *_tiny(d_model=32), "--lr", "0.5", "--out", str(d)], capsys,
                   "another config", "model.d_model")


def test_divergence_exit_3_keeps_last_checkpoint(tmp_path, capsys):
    from toybb.checkpoints import CKPT_NAME
    from toybb.train.runs import load_models

    out = tmp_path / "div"
    argv = ["train", *TINY]
    code, err = run_cli([*argv, "--lr", "1000", "--out", str(out)], capsys)
    assert code == 3 and len(err) == 1, err  # the error alone ("N run(s) -> DIR" goes to stdout)
    step = int(err[0].split("at step ")[1].split()[0])
    assert 1 < step < 12 and "NaN/inf" in err[0] and "--lr" in err[0], err
    cfg, _, state, ck_step = load_models(out)
    assert ck_step == step - 1 and f"checkpoint (step {ck_step})" in err[0]
    assert all(np.isfinite(np.asarray(x)).all() for x in __import__("jax").tree.leaves(state["params"]))
    assert (out / CKPT_NAME).exists() and not (out / "summary.json").exists()
    steps = [int(line.split(",")[0]) for line in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == list(range(step))  # nothing recorded beyond the kept checkpoint
    fresh = tmp_path / "ok"
    code, err = run_cli([*argv, "--lr", "0.5", "--out", str(fresh)], capsys)
    assert code == 0 and json.loads((fresh / "summary.json").read_text())["step"] == 12, err


# ---- longctx, ppl, sweep: validated before any model is loaded -------------------------------------------------
@pytest.fixture
def no_model(monkeypatch):
    """Loading a checkpoint or training a toy LM fails the test: these inputs must be refused first."""
    import importlib

    load, toy = (importlib.import_module(m) for m in ("toybb.llm.load", "toybb.longctx.toy"))

    def refuse(*a, **k):
        raise AssertionError("loaded a model before validating the arguments")

    monkeypatch.setattr(load, "load", refuse)
    monkeypatch.setattr(load.Checkpoint, "load_weights", refuse)
    monkeypatch.setattr(toy, "train_char_lm", refuse)


@pytest.mark.parametrize("args, needles", [
    (["toy", "--seq-len", "0"], ["--seq-len"]),
    (["toy", "--seq-len", "8", "--selfextend", "8"], ["--selfextend"]),
    (["toy", "--seq-len", "8", "--selfextend", "2,0"], ["--selfextend"]),
    (["toy", "--factors", ","], ["--factors"]),
    (["toy", "--eval-windows", "0"], ["--eval-windows"]),
    (["ppl-length", "m", "--seq-len", ","], ["--seq-len"]),
    (["passkey", "m", "--seq-len", ","], ["--seq-len"]),
    (["passkey", "m", "--depths", "2"], ["--depths"]),
    (["stream", "m", "--tokens", "0"], ["--tokens"]),
    (["ppl-length", "m", "--methods", "magic"], ["--methods"]),
    (["ppl-length", "m", "--texts", "a.txt"], ["--texts was renamed --text"]),
    (["toy", "--context", "8"], ["--context was renamed --seq-len"]),
    (["toy", "--out="], ["--out", "empty"]),  # found by tests/test_fuzz_cli.py
])
def test_longctx_bad_flags(args, needles, tmp_path, capsys, no_model):
    out = [] if any(a.startswith("--out") for a in args) else [f"--out={tmp_path / 'o'}"]
    one_line_error(["longctx", args[0], *out, *args[1:]], capsys, *needles)


def test_ppl_negative_tokens(tmp_path, capsys, no_model):
    t = tmp_path / "t.txt"
    t.write_text("some text " * 20)
    one_line_error(["ppl", "smollm2-135m-instruct", "--text", str(t), "--tokens", "-5"], capsys, "--tokens")
    one_line_error(["ppl", "smollm2-135m-instruct", "--text", str(t), "--max-tokens", "5"], capsys,
                   "--max-tokens was renamed --tokens")


@pytest.fixture
def sweep_file(tmp_path):
    from tests._shared import TINY_BASE

    p = tmp_path / "sweep.json"
    p.write_text(json.dumps({"base": TINY_BASE, "grid": {"optim.lr": [0.001, 0.002]}}))
    return p


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1"])
def test_sweep_max_memory_not_finite(sweep_file, tmp_path, capsys, value):
    one_line_error(["sweep", str(sweep_file), "--out", str(tmp_path / "s"), f"--max-memory-gb={value}", "--dry-run"],
                   capsys, "--max-memory-gb")


def test_sweep_corrupt_sweep_json(sweep_file, tmp_path, capsys, monkeypatch):
    import toybb.train.trainer as trainer

    monkeypatch.setattr(trainer, "Trainer", lambda *a, **k: pytest.fail("trained despite a corrupt sweep.json"))
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "sweep.json").write_text('{"groups": [')
    one_line_error(["sweep", str(sweep_file), "--out", str(tmp_path / "s"), "--no-progress"], capsys,
                   "sweep.json", "not valid JSON")
