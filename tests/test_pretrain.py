"""`toybb pretrain` on one tiny configuration shared by every test: the loss falls, the checkpoint series is
written and loads with toybb.load(DIR, step=N) (reproducing metrics.csv) and in every command taking a MODEL
(`--step N`), an interrupted run resumed gives the same metrics.csv, a 4-device run equals the 1-device one,
and bad input is one line and exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import toybb
from toybb.cli import main
from toybb.llm.pretrain_folder import first_token, series_steps
from toybb.pretrain.config import PretrainConfig, build_model_config, log_steps
from toybb.pretrain.data import heldout_batch, prepare_data
from toybb.pretrain.loop import pretrain
from toybb.pretrain.runs import read_configs
from toybb.probes.metrics import token_nll
from toybb.records import read_csv

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--text", "pride", "--max-chars", "30000", "--vocab-size", "300", "--layers", "2", "--d-model", "32",
        "--heads", "2", "--seq-len", "16", "--batch", "8", "--steps", "40", "--eval-every", "10", "--eval-batch", "8",
        "--ckpt-every", "10", "--lr", "3e-3", "--no-progress"]


def _csv(folder: Path) -> list[dict[str, str]]:
    return read_csv(folder / "metrics.csv", required=("step", "heldout_loss"))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrain") / "run"
    assert main(["pretrain", "--out", str(out), *TINY]) == 0
    return out


def test_loss_falls_and_the_run_is_recorded(run):
    rows = _csv(run)
    assert [int(r["step"]) for r in rows] == list(PretrainConfig(steps=40, eval_every=10).eval_steps())
    held = [float(r["heldout_loss"]) for r in rows]
    assert held[0] > np.log(300) - 0.5 and held[-1] < held[0] - 1.0, held
    assert float(rows[-1]["train_loss"]) < float(rows[1]["train_loss"]) - 1.0
    for name in ("sink_attention_excl0_l1", "sink_rate_l1", "value_ratio_l0", "residual_ratio_l1", "massive_ratio_l0",
                 "kurtosis_l1"):
        assert all(np.isfinite(float(r[name])) for r in rows), name
    meta = json.loads((run / "config.json").read_text())
    assert meta["kind"] == "pretrain" and meta["precision"] == "highest" and "jax" in meta["versions"]
    assert meta["config"]["model"]["arch"] == "llama" and meta["config"]["model"]["vocab_size"] == 300
    assert json.loads((run / "summary.json").read_text())["tokens_seen"] == 40 * 8 * 16
    assert (run / "emergence.png").stat().st_size > 10_000  # the figure of the finished run


def test_series_is_written_and_loads_at_each_step(run):
    cfg, model_cfg = read_configs(run)
    assert series_steps(run) == list(cfg.series()) == [1, 2, 3, 6, 10, 18, 32, 40]
    data, _ = prepare_data(cfg, run)
    tokens = heldout_batch(data.heldout, cfg.eval_batch, cfg.seq_len, first_token(cfg.bos))
    by_step = {int(r["step"]): float(r["heldout_loss"]) for r in _csv(run)}
    for step in (1, 10, 40):
        m = toybb.load(run, step=step)
        assert m.info["step"] == step and m.config == model_cfg
        nll = token_nll(m.model()(jnp.asarray(tokens[:, :-1])), jnp.asarray(tokens[:, 1:])).mean()
        np.testing.assert_allclose(float(nll), by_step[step], rtol=1e-5)  # metrics.csv, measured while training
    m = toybb.load(run)  # the latest step
    assert m.info["step"] == 40 and m.encode("It is")[0] == 1  # BOS first
    with pytest.raises(toybb.ConfigError, match="no checkpoint of step 5"):
        toybb.load(run, step=5)


def test_series_command_reads_a_pretrain_folder(run, tmp_path, capsys):
    """`toybb series DIR` probes every checkpoint of a pretrain folder's series (or those of --steps) with
    the metrics it uses for any LLM checkpoint; a step the series lacks is one line before any probe."""
    out = tmp_path / "series"
    assert main(["series", str(run), "--steps", "1,40", "--out", str(out)]) == 0
    rows = read_csv(out / "series.csv", required=("step",))
    assert [int(r["step"]) for r in rows] == [1, 40] and (out / "series.png").stat().st_size > 10_000
    assert all(0 <= float(r["sink_attention_excl0_l1"]) <= 1 and float(r["residual_peak_l1"]) > 0 for r in rows)
    assert rows[0]["residual_peak_l1"] != rows[1]["residual_peak_l1"]  # two different checkpoints
    assert main(["series", str(run), "--steps", "5", "--out", str(tmp_path / "bad")]) == 2
    assert "no checkpoint of step 5; its series: [1, 2, 3, 6, 10, 18, 32, 40]" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_load_gives_the_logits_of_the_stored_parameters(run):
    """toybb.load(DIR, step=N) goes through the one loader (`toybb.llm.load.open_checkpoint`) and gives the
    logits of series/step_N.npz merged into the model as it was trained."""
    from flax import nnx

    from toybb.models.transformer import abstract_model
    from toybb.checkpoints import load_checkpoint
    from toybb.llm.pretrain_folder import series_path

    graphdef, template = nnx.split(abstract_model(read_configs(run)[1]))
    for step in (2, 40):
        m = toybb.load(run, step=step)
        tokens = jnp.asarray(m.tokens("It is a truth"))
        stored, _ = load_checkpoint(series_path(run, step), template)
        np.testing.assert_array_equal(np.asarray(m.model()(tokens)), np.asarray(nnx.merge(graphdef, stored)(tokens)))


def test_ppl_and_intervene_read_a_pretrain_folder(run, tmp_path, capsys):
    """Every command taking a MODEL reads a pretrain folder: its latest checkpoint, or the one of --step N."""
    ppl = {}
    for step in ([], ["--step", "1"], ["--step", "40"]):
        assert main(["ppl", str(run), "--text", "pride", "--tokens", "150", "--seq-len", "16", "--no-progress",
                     *step]) == 0
        out = capsys.readouterr().out
        ppl[tuple(step)] = float(out.split()[1])
        assert f"step {step[1] if step else 40})" in out  # the step scored is named
    assert ppl[()] == ppl[("--step", "40")] < ppl[("--step", "1")] / 2  # the latest is the trained one

    nll = {}
    for step in ("1", "40"):
        out = tmp_path / f"intervene{step}"
        assert main(["intervene", str(run), "--step", step, "--text", "pride", "--site", "blocks.1.attn.z", "--op",
                     "zero", "--samples", "4", "--batch", "4", "--seq-len", "16", "--out", str(out)]) == 0
        meta = json.loads((out / "config.json").read_text())
        assert meta["step"] == int(step) and meta["bos"] is True  # the run's <|bos|> first, as in training
        nll[step] = {r["intervention"]: float(r["nll"]) for r in read_csv(out / "interventions.csv",
                                                                           required=("nll",))}
    assert nll["40"]["none"] < nll["1"]["none"] - 0.5 and nll["40"]["blocks.1.attn.z zero"] != nll["40"]["none"]


@pytest.mark.slow  # the probe's interventions and four figures: about 20 s
def test_probe_reads_a_pretrain_folder(run, tmp_path):
    out = tmp_path / "probe"
    assert main(["probe", str(run), "--step", "10", "--text", "pride", "--samples", "2", "--seq-len", "16",
                 "--batch", "2", "--first-positions", "4", "--intervene-samples", "1", "--intervene-heads", "1",
                 "--no-progress", "--out", str(out)]) == 0
    assert [r["layer"] for r in read_csv(out / "layers.csv", required=("layer",))] == ["0", "1"]
    assert json.loads((out / "config.json").read_text())["step"] == 10


@pytest.fixture
def no_weights(monkeypatch):
    from toybb.llm.load import Checkpoint

    def refuse(*a, **k):
        raise AssertionError("loaded the weights before checking the input")

    monkeypatch.setattr(Checkpoint, "load_weights", refuse)


PROBE, INTERVENE, PPL = (["probe", "--text", "pride"], ["intervene", "--text", "pride", "--site", "embed", "--op", "zero"],
                         ["ppl", "--text", "pride"])
MISSING_STEP = "has no checkpoint of step 5; its series: [1, 2, 3, 6, 10, 18, 32, 40]"


@pytest.mark.parametrize("command, case, needle", [
    *[(c, "step", MISSING_STEP) for c in (PROBE, INTERVENE, PPL)],
    *[(c, "empty", "holds no checkpoint yet; train it first") for c in (PROBE, INTERVENE, PPL, ["series"])],
    *[(c, "seq_len", "longer than the model context (16") for c in (PROBE, INTERVENE)],
    (["intervene", "--text", "pride", "--site", "blocks.*.attn.z", "--op", "zero", "--layer", "2", "--seq-len", "16"],
     "layer", "layer 2 is out of range (0..1)"),
])
def test_bad_step_or_input_fails_before_the_weights_load(run, tmp_path, capsys, no_weights, command, case, needle):
    """A step the series lacks, an empty series, a context or a layer the model lacks: one line, exit 2, from
    the config and tokenizer alone (Checkpoint.load_weights refuses to run)."""
    folder, extra = run, {"step": ["--step", "5"], "seq_len": ["--seq-len", "32"]}.get(case, [])
    if case == "empty":  # killed before its first checkpoint
        folder = tmp_path / "empty"
        folder.mkdir()
        for name in ("config.json", "tokenizer.json"):
            (folder / name).write_bytes((run / name).read_bytes())
    out = ["--out", str(tmp_path / "o")] if command[0] != "ppl" else []
    assert main([command[0], str(folder), *command[1:], *extra, *out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "o").exists()


def test_interrupted_run_resumes_to_the_same_metrics(run, tmp_path):
    out = tmp_path / "resumed"
    args = ["pretrain", "--out", str(out), *TINY]
    cfg = PretrainConfig(text=("pride",), max_chars=30000, vocab_size=300, seq_len=16, batch=8, steps=40,
                         eval_every=10, eval_batch=8, ckpt_every=10, lr=3e-3)
    model = build_model_config(dict(n_layers=2, d_model=32, n_heads=2, mlp_dim=128), 300, 16)
    data, _ = prepare_data(cfg, out)
    pretrain(cfg, model, data, out, progress=False, stop_after=18)  # as if killed after step 18's rows
    assert not (out / "summary.json").exists() and int(_csv(out)[-1]["step"]) == 18
    assert main(args) == 0  # resumes from the checkpoint of step 10, rewrites the rows after it
    summary = (out / "summary.json").read_text()
    assert main(args) == 0 and (out / "summary.json").read_text() == summary  # finished: nothing changes
    assert (out / "metrics.csv").read_bytes() == (run / "metrics.csv").read_bytes()
    for step in series_steps(run):
        assert (out / "series" / f"step_{step:07d}.npz").read_bytes() == (run / "series" / f"step_{step:07d}.npz").read_bytes()


def test_two_hosts_of_two_devices_equal_one_device(run, tmp_path):
    """Data parallel over 4 devices in 2 processes (`--distributed`, jax.distributed on CPU through gloo): the
    numbers of the 1-device run; process 0 writes the folder, process 1 nothing."""
    import socket

    with socket.socket() as sock:  # a free port for the coordinator
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "two_hosts"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    procs = [subprocess.Popen([sys.executable, "-m", "toybb.cli", "pretrain", "--out", str(out), *TINY, "--distributed",
                               "--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
             for i in (0, 1)]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (o, e) in zip(procs, results):
        assert p.returncode == 0, e[-2000:]
    assert "on 2 processes" in results[0][0] and "toybb pretrain" not in results[1][0]  # process 0 reports
    meta = json.loads((out / "config.json").read_text())
    assert meta["devices"] == 4 and meta["processes"] == 2
    one, four = _csv(run), _csv(out)
    assert [r["step"] for r in one] == [r["step"] for r in four]
    for a, b in zip(one, four):
        for k in a:  # the gradient's sum is split over devices: equal up to float rounding
            np.testing.assert_allclose(float(b[k]), float(a[k]), rtol=2e-4, atol=1e-5, err_msg=f"{k} at {a['step']}")


@pytest.mark.parametrize("case, needle", [
    ("empty", "holds no text"),
    ("binary", "not UTF-8"),
    ("vocab", "larger than the text allows"),
    ("positions", "beyond the model's positions"),
    ("other_run", "another kind of run"),
    ("field", "not a model field"),
    ("bos", "--bos must be"),
    ("bb_run", "not a `toybb train` run folder"),
])
def test_bad_input_is_one_line_and_exit_2(case, needle, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["pretrain", "--out", str(out), "--no-progress", "--steps", "2"]
    if case == "empty":
        (tmp_path / "e.txt").write_text("  \n\n")
        args += ["--text", str(tmp_path / "e.txt")]
    elif case == "binary":
        (tmp_path / "b.bin").write_bytes(bytes(range(256)) * 4)
        args += ["--text", str(tmp_path / "b.bin")]
    elif case == "vocab":
        args += ["--max-chars", "20000", "--vocab-size", "5000"]  # BPE finds fewer tokens in it
    elif case == "positions":
        args += ["--seq-len", "64", "--model-set", "max_positions=32"]
    elif case == "other_run":
        out.mkdir()
        (out / "config.json").write_text(json.dumps({"config": {"model": {}, "task": {}, "optim": {}, "train": {}}}))
    elif case == "field":
        args += ["--model-set", "n_layerz=3"]
    elif case == "bos":
        args += ["--bos", "first"]
    else:
        args += ["--bb-run", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not (out / "metrics.csv").exists()  # stopped before training


def test_model_set_reaches_the_model_config():
    from toybb.pretrain.config import parse_model_set

    fields = parse_model_set(("attention=relu", "n_kv_heads=1", "attn_bias=true", "no_mlp=[0]"))
    cfg = build_model_config({"n_layers": 2, **fields}, 300, 16)
    assert (cfg.attention, cfg.n_kv_heads, cfg.attn_bias, cfg.no_mlp, cfg.max_positions) == ("relu", 1, True, (0,), 16)
    assert log_steps(1000, 4) == (1, 2, 3, 6, 10, 18, 32, 56, 100, 178, 316, 562, 1000)


def test_toy_train_refuses_a_pretrain_folder(run, capsys):
    assert main(["train", "--out", str(run), "--steps", "2", "--no-progress", "--no-plot"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another kind of run" in err[0], err


def test_fewer_steps_than_the_checkpoint_is_refused_untouched(run, capsys):
    """As `toybb train` does (it was a traceback after rewriting config.json and metrics.csv)."""
    before = {q: q.read_bytes() for q in sorted(run.rglob("*")) if q.is_file()}
    argv = [a if a != "40" else "20" for a in TINY]
    assert main(["pretrain", "--out", str(run), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a checkpoint at step 40, past --steps 20; give --steps 40 or more" in err[0], err
    assert {q: q.read_bytes() for q in sorted(run.rglob("*")) if q.is_file()} == before


def test_a_diverged_run_says_so_when_rerun(tmp_path, capsys):
    """A run that diverged records it (diverged.json, as `toybb train` does); a rerun says so at once (exit 3)
    instead of training into NaN again, and changes nothing."""
    out = tmp_path / "nan"
    argv = [a if a != "3e-3" else "1e9" for a in TINY]
    assert main(["pretrain", "--out", str(out), *argv]) == 3
    assert json.loads((out / "diverged.json").read_text())["step"] >= 1  # the first step evaluated in NaN
    capsys.readouterr()
    before = {q: q.read_bytes() for q in sorted(out.rglob("*")) if q.is_file()}
    assert main(["pretrain", "--out", str(out), *argv]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "diverged before (diverged.json; delete it to retry)" in err[0], err
    assert {q: q.read_bytes() for q in sorted(out.rglob("*")) if q.is_file()} == before


def test_emergence_figure_has_every_line_in_its_legend(run, tmp_path, monkeypatch):
    from toybb import plot, style

    seen = {}
    monkeypatch.setattr(style, "save", lambda fig, path, dpi=style.DPI: seen.setdefault("fig", fig) and Path(path))
    bb = tmp_path / "bb"  # a `toybb train` folder: 2 seeds x 3 steps
    bb.mkdir()
    from toybb.config import cpu_preset

    cfg = cpu_preset().replace(train={"seeds": (0, 1), "steps": 20})
    (bb / "config.json").write_text(json.dumps({"config": cfg.to_dict()}))
    cols = ["step", "seed", "lr", "sink_attention_l0", "value_drain_l0", "value_others_l0", "residual_peak_l0",
            "residual_others_l0"]
    rows = [[s, seed, "0.004", 0.3 + s / 100, 1.0 - s / 40, 2.0, 5 + s / 5, 4.0] for s in (0, 10, 20) for seed in (0, 1)]
    (bb / "metrics.csv").write_text("\n".join(",".join(map(str, r)) for r in [cols, *rows]) + "\n")
    plot.plot_emergence(run, tmp_path / "e.png", bb_run=bb)
    fig = seen["fig"]
    assert len(fig.axes) == len(plot.EMERGENCE_PANELS) + 3 and style.unlisted_labels(fig) == []
    assert {"layer 0", "layer 1"} <= {t.get_text() for t in fig.legends[0].get_texts()}
    assert "llama 2-layer" in fig._suptitle.get_text()
    value = fig.axes[len(plot.EMERGENCE_PANELS) + 1].get_lines()[0].get_ydata()
    np.testing.assert_allclose(value, [0.5, 0.375, 0.25])  # ||Val<s>|| over the others' mean, per step
    style.pyplot().close(fig)


def test_learning_rate_warmup_and_cosine_schedule_reach_the_optimizer():
    """--warmup and --schedule: linear from 0 to --lr, then constant or cosine to COSINE_FINAL x --lr at --steps;
    the optimiser's injected learning rate follows them step by step; no warmup and constant is --lr itself."""
    import jax

    from toybb.pretrain.config import COSINE_FINAL
    from toybb.train.optim import make_optimizer

    assert PretrainConfig().learning_rate() == 1e-3  # the default run's numbers are unchanged
    cos = PretrainConfig(steps=100, lr=2e-3, warmup=10, schedule="cosine")
    const = PretrainConfig(steps=100, lr=2e-3, warmup=10)
    for step, want_cos, want_const in ((0, 0.0, 0.0), (5, 1e-3, 1e-3), (10, 2e-3, 2e-3),
                                       (55, 2e-3 * (COSINE_FINAL + (1 - COSINE_FINAL) / 2), 2e-3),
                                       (100, 2e-3 * COSINE_FINAL, 2e-3)):
        assert float(cos.learning_rate()(step)) == pytest.approx(want_cos, rel=1e-5, abs=1e-12), step
        assert float(const.learning_rate()(step)) == pytest.approx(want_const, rel=1e-5, abs=1e-12), step
    params = {"w": jnp.ones((3, 3))}
    for name in ("adam", "sgd", "muon"):
        c = PretrainConfig(steps=100, lr=2e-3, warmup=10, schedule="cosine", optimizer=name)
        tx = make_optimizer(c.optim, lr=c.learning_rate())
        state = tx.init(params)
        for _ in range(5):
            _, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
        assert float(state.hyperparams["learning_rate"]) == pytest.approx(float(c.learning_rate()(4)), rel=1e-6), name  # set before the 5th update
    with pytest.raises(toybb.Error, match="--warmup 40 must be below --steps 40"):
        PretrainConfig(steps=40, warmup=40)


def test_a_cosine_run_resumes_only_with_its_own_steps(run, tmp_path, capsys):
    """The cosine decay ends at --steps, so another --steps is another run (a constant one may grow)."""
    import shutil

    cos = tmp_path / "cos"
    shutil.copytree(run, cos)
    meta = json.loads((cos / "config.json").read_text())
    meta["config"]["pretrain"]["schedule"] = "cosine"
    (cos / "config.json").write_text(json.dumps(meta))
    argv = [a if a != "40" else "80" for a in TINY]
    assert main(["pretrain", "--out", str(cos), *argv, "--schedule", "cosine"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another configuration (steps: 40 -> 80)" in err[0], err
    assert main(["pretrain", "--out", str(run), *TINY, "--schedule", "cosine"]) == 2  # constant -> cosine
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "schedule: 'constant' -> 'cosine'" in err[0], err


def test_bb_text_script_writes_the_toy_tasks_sequences_as_documents(tmp_path, monkeypatch):
    """scripts/bb_text.py (the positive control of figures/README.md): one BB sequence per .jsonl document, in the
    toy task's characters, each trigger followed by a copy of the character before it, read back by --text."""
    import importlib.util

    from toybb.task import BBTask
    from toybb.texts import iter_documents

    spec = importlib.util.spec_from_file_location("bb_text", ROOT / "scripts" / "bb_text.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "bb.jsonl"
    monkeypatch.setattr(sys, "argv", ["bb_text.py", "--out", str(out), "--docs", "6", "--len", "40"])
    mod.main()
    docs = list(iter_documents(str(out)))
    task = BBTask()
    triggers = set(task.decode(task.triggers))
    assert len(docs) == 6 and all(len(d) == 40 and set(d) <= set(task.chars) for d in docs)
    copies = [(d[i - 1], d[i + 1]) for d in docs for i in range(1, 39) if d[i] in triggers]
    assert copies and all(a == b for a, b in copies)


def test_mitigations_script_tables_every_row_over_its_seeds(run, tmp_path, capsys):
    """scripts/pretrain_mitigations.py (figures/README.md's pretraining table): a finished run is read, not trained
    again; a missing seed is trained; each column is the median [min-max] of the seeds' last evaluations."""
    import importlib.util
    import shutil

    spec = importlib.util.spec_from_file_location("pretrain_mitigations", ROOT / "scripts" / "pretrain_mitigations.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "mit"
    shutil.copytree(run, out / "softmax" / "seed0")
    before = (out / "softmax" / "seed0" / "metrics.csv").read_bytes()
    model = [a for i, a in enumerate(TINY) if a != "--no-progress" and "--steps" not in TINY[max(i - 1, 0):i + 1]]
    assert mod.main(["--out", str(out), "--rows", "softmax", "--seeds", "0", "1", "--steps", "40", "--", *model]) == 0
    assert (out / "softmax" / "seed0" / "metrics.csv").read_bytes() == before  # finished: not trained again
    losses = [float(_csv(out / "softmax" / f"seed{s}")[-1]["heldout_loss"]) for s in (0, 1)]
    assert losses[0] != losses[1]
    rows = read_csv(out / "mitigations.csv", required=("row", "seed", "held-out loss"))
    assert [(r["row"], r["seed"], r["step"]) for r in rows] == [("softmax", "0", "40"), ("softmax", "1", "40")]
    assert [float(r["held-out loss"]) for r in rows] == pytest.approx(losses, abs=1e-5)
    line = [l for l in (out / "mitigations.md").read_text().splitlines() if l.startswith("| softmax")][0]
    lo, hi = sorted(losses)
    assert f"| 2 | {(lo + hi) / 2:.3f} [{lo:.3f}-{hi:.3f}] |" in line, line


def test_a_given_tokenizer_is_used_instead_of_training_one(run, tmp_path, capsys):
    """--tokenizer: a checkpoint's tokenizer (here the fixture run's folder) replaces the trained one; its size is
    the vocabulary and its BOS the first token, so the fixture's own tokenizer gives the fixture's numbers.
    A tokenizer that cannot be read, or --vocab-size beside it, is one line and exit 2."""
    out = tmp_path / "given"
    args = [a for a in TINY if a not in ("--vocab-size", "300")]
    assert main(["pretrain", "--out", str(out), *args, "--tokenizer", str(run)]) == 0
    cfg = json.loads((out / "config.json").read_text())["config"]["pretrain"]
    assert cfg["tokenizer"] == str(run) and cfg["vocab_size"] == 300 and cfg["bos"] == "fixed:1"
    assert (out / "tokenizer.json").read_text() == (run / "tokenizer.json").read_text()
    assert [r["heldout_loss"] for r in _csv(out)] == [r["heldout_loss"] for r in _csv(run)]
    capsys.readouterr()
    for extra, needle in ((["--tokenizer", str(tmp_path / "none.json")], "--tokenizer"),
                          (["--tokenizer", str(run / "tokenizer.json"), "--vocab-size", "300"], "give one of them")):
        assert main(["pretrain", "--out", str(tmp_path / "bad"), *args, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err


def test_a_given_tokenizer_without_bos_or_end_of_text_is_one_line(tmp_path, capsys):
    """A tokenizer.json with no BOS token under --bos token, or with no end-of-text token to separate the packed
    documents: one line naming what to give, exit 2, before anything trains."""
    from tokenizers import Tokenizer, models

    from toybb.pretrain.data import end_of_text

    bare = Tokenizer(models.BPE(vocab={"a": 0, "b": 1}, merges=[]))
    path = tmp_path / "bare.json"
    path.write_text(bare.to_str())
    args = [a for a in TINY if a not in ("--vocab-size", "300")]
    assert main(["pretrain", "--out", str(tmp_path / "o"), *args, "--tokenizer", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no BOS token; give --bos fixed:ID or --bos none" in err[0], err
    assert not (tmp_path / "o").exists()
    with pytest.raises(toybb.ConfigError, match="none of the end-of-text tokens"):
        end_of_text(bare)
