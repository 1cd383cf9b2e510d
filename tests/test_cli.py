"""CLI: bad input is one line on stderr with exit code 2 (no traceback); a tiny run end to end."""

import json
import shutil
import subprocess
import sys

import pytest

from toybb.cli import main
from toybb.plot import run_labels
from toybb.records import load_metrics

TINY = ["--d-model", "16", "--seq-len", "8", "--batch", "8", "--eval-batch", "8", "--steps", "20",
        "--eval-every", "10", "--seeds", "2", "--no-progress"]


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--optimizer", "lion"], "optim.name"),
        (["train", "--attention", "linear"], "model.attention"),
        (["train", "--seq-len", "300", "--max-len", "256"], "position table"),
        (["train", "--triggers", "67"], "n_triggers"),
        (["train", "--lr", "0"], "optim.lr"),
        (["train", "--lr=-1e-3"], "optim.lr"),
        (["train", "--steps", "0"], "train.steps"),
        (["train", "--steps=-3"], "train.steps"),
        (["train", "--seeds", "0"], "--seeds"),
        (["train", "--preset", "huge"], "preset"),
        (["train", "--lr", "fast"], "--lr"),
        (["train", "--no-mlp", "3"], "out of range"),
        (["train", "--batch", "64", "--microbatch", "5"], "train.microbatch"),
        (["plot", "/nonexistent/run"], "not a toybb run folder"),
    ],
)
def test_bad_input_one_line_exit_2(argv, needle, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        sys.exit(main(argv + ["--out", str(tmp_path / "o")] if argv[0] == "train" else argv))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


@pytest.mark.parametrize("content, needle", [("model: {d_model: 32\n", "malformed"),
                                              ("model:\n  depth: 3\n", "depth"),
                                              ("[1, 2]\n", "mapping")])
def test_bad_config_file(content, needle, capsys, tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(content)
    assert main(["train", "--config", str(p), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_no_traceback_in_subprocess(tmp_path):
    r = subprocess.run([sys.executable, "-m", "toybb.cli", "train", "--attention", "cosine", "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "model.attention" in r.stderr


def test_train_and_plot_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"model": {"n_heads": 2}, "optim": {"lr": 0.003}}))
    assert main(["train", *TINY, "--config", str(cfg), "--out", str(out)]) == 0
    meta = json.loads((out / "config.json").read_text())
    assert meta["config"]["model"]["n_heads"] == 2 and meta["config"]["model"]["d_model"] == 16
    assert meta["config"]["optim"]["lr"] == 0.003 and meta["config"]["train"]["seeds"] == [0, 1]
    assert (out / "dynamics.png").stat().st_size > 10_000
    assert "active tokens" in capsys.readouterr().out
    (out / "dynamics.png").unlink()
    assert main(["plot", str(out)]) == 0 and (out / "dynamics.png").exists()
    # several runs in one figure, labelled by the settings in which they differ
    other = tmp_path / "sgd"
    shutil.copytree(out, other)
    meta["config"]["optim"]["name"] = "sgd"
    (other / "config.json").write_text(json.dumps(meta))
    assert main(["plot", str(out), str(other)]) == 0 and (tmp_path / "run_vs_sgd.png").stat().st_size > 10_000
    assert run_labels([load_metrics(out), load_metrics(other)], ["run", "sgd"]) == ["optimizer adam", "optimizer sgd"]
    assert main(["plot", str(out), "--reference", str(other / "metrics.csv")]) == 2  # a run is not a reference
    assert f"toybb plot {out} {other}" in capsys.readouterr().err
    assert main(["plot", str(out), str(tmp_path / "run" / ".")]) == 2  # the same run twice
    assert "given twice; give each run once" in capsys.readouterr().err
    # rerunning a finished run resumes from its final checkpoint and changes nothing
    before = (out / "metrics.csv").read_text()
    assert main(["train", *TINY, "--config", str(cfg), "--out", str(out)]) == 0
    assert (out / "metrics.csv").read_text() == before


def test_missing_optional_package_names_the_extra(tmp_path):
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('gguf', 'safetensors', 'tokenizers'):\n"
        "            raise ImportError(name, name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from toybb.cli import main\n"
        f"sys.exit(main(['inspect', {str(tmp_path / 'm.gguf')!r}]))\n"
    )
    (tmp_path / "m.gguf").write_bytes(b"GGUF" + b"\0" * 64)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert ".[llm]" in r.stderr


def test_summary_gives_medians_per_learning_rate(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--steps", "2", "--d-model", "16", "--batch", "4", "--eval-batch", "4", "--seq-len", "16",
            "--eval-every", "1", "--seeds", "2", "--lr", "1e-3", "--lr", "2e-3", "--no-progress", "--no-plot",
            "--out", str(out)]
    assert main(argv) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("step 2 ")]
    assert [x.split(",")[0] for x in lines] == ["step 2 (lr 0.001", "step 2 (lr 0.002"], lines
    s = json.loads((out / "summary.json").read_text())
    assert "final_median" not in s and set(s["final_median_by_lr"]) == {"0.001", "0.002"}
    per_run = s["final_per_run"]["loss"]  # runs in the order of s["runs"]
    for lr in ("0.001", "0.002"):
        runs = [i for i, r in enumerate(s["runs"]) if f"{r['lr']:g}" == lr]
        assert len(runs) == 2
        want = sorted(per_run[i] for i in runs)
        assert s["final_median_by_lr"][lr]["loss"] == pytest.approx((want[0] + want[1]) / 2)
        assert set(s["interventions_median_by_lr"][lr]) == set(s["interventions_median_by_lr"]["0.001"])
