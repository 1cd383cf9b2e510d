"""SimpleModel (SPEC §4) on the core training loop, and the fits of the theory's rates to trained runs
(toybb/theory/experiment.py, `toybb theory --trained`)."""

import csv
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from toybb.cli import main
from toybb.config import ModelConfig, cpu_preset
from toybb.errors import ConfigError
from toybb.models import build_model
from toybb.models.capture import Capture, run_with_capture
from toybb.models.sites import Edit, SiteError
from toybb.probes import bb as bbprobes
from toybb.task import BBTask
from toybb.theory import experiment as E
from toybb.theory import rates as R
from toybb.models.simple import COPY_SCALE, SimpleModel

TASK = BBTask()


def _model(seed=0, logits_scale=2.0):
    m = SimpleModel(ModelConfig(arch="simple", d_model=16, max_len=64), rngs=nnx.Rngs(seed))
    att = m.blocks[0].attn
    att.bos_logit[...] = logits_scale * jax.random.normal(jax.random.key(seed + 1), att.bos_logit.shape)
    att.prev_logit[...] = logits_scale * jax.random.normal(jax.random.key(seed + 2), att.prev_logit.shape)
    return m


# ---- SimpleModel --------------------------------------------------------------------------------------


def test_simple_model_declares_its_sites_and_takes_edits():
    """The closed form captures every site it declares, with the declared shapes; edits act at its sites
    (zeroing mlp.out is the MLP ablation), and the sites it does not compute with are read-only."""
    m = _model()
    toks = TASK.sample(jax.random.key(3), 2, 12)[:, :-1]
    out, cap = run_with_capture(m, toks, capture=Capture("*"))
    sites = m.sites()
    assert set(cap) == set(sites.names())
    for name, arr in cap.items():
        assert tuple(arr.shape) == sites.shape(name, *toks.shape), name
    edited = m(toks, edits=[Edit("blocks.0.mlp.out", "zero")])
    np.testing.assert_array_equal(np.asarray(edited), np.asarray(m(toks, ablate=frozenset({"blocks.0.mlp"}))))
    np.testing.assert_allclose(np.asarray(edited), np.asarray(cap["blocks.0.resid_mid"]), atol=1e-6)
    doubled = m(toks, edits=[Edit("blocks.0.attn.out", "scale", value=2.0)])
    np.testing.assert_allclose(np.asarray(doubled - out), np.asarray(cap["blocks.0.attn.out"]), atol=1e-5)
    with pytest.raises(SiteError, match="read-only"):
        m(toks, edits=[Edit("blocks.0.attn.pattern", "zero")])


def test_simple_model_shapes_capture_and_brute_force_attention():
    m = _model()
    toks = TASK.sample(jax.random.key(3), 3, 24)[:, :-1]
    sites = ("blocks.0.attn.logits", "blocks.0.attn.pattern", "blocks.0.attn.out", "blocks.0.attn.v_out",
             "blocks.0.attn.pattern@key0", "blocks.0.attn.v_out@norm", "blocks.*.resid_post@norm",
             "blocks.0.resid_post", "blocks.0.mlp.out", "embed")
    out, cap = run_with_capture(m, toks, capture=Capture(sites))
    V = m.cfg.vocab_size
    assert out.shape == (3, 24, V)
    assert cap["blocks.0.attn.logits"].shape == (3, 1, 24, 24)
    assert cap["blocks.0.attn.pattern@key0"].shape == (3, 1, 24)
    assert cap["blocks.0.attn.v_out"].shape == (3, 24, 1, V)
    assert cap["blocks.0.resid_post@norm"].shape == (3, 24)
    np.testing.assert_allclose(cap["blocks.0.resid_post"], out)
    pat = np.asarray(cap["blocks.0.attn.pattern"][:, 0])
    np.testing.assert_allclose(pat.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(pat[0], 1) == 0)  # causal
    # the cheap running-sum attention equals softmax(logits) @ values
    vals = np.asarray(m.blocks[0].attn.values())[np.asarray(toks)]
    np.testing.assert_allclose(cap["blocks.0.attn.out"], np.einsum("bqk,bkv->bqv", pat, vals), atol=1e-4)
    # logits: non-trigger queries only on BOS, trigger queries only on i-1 (i >= 2), the rest 0
    lg = np.asarray(cap["blocks.0.attn.logits"][:, 0])
    trig = np.asarray(TASK.trigger_mask(toks))
    a = np.asarray(m.blocks[0].attn.bos_logit[...])[np.asarray(toks)]
    p = np.asarray(m.blocks[0].attn.prev_logit[...])[np.asarray(toks)]
    for b in range(3):
        for i in range(2, 24):
            row = lg[b, i, : i + 1].copy()
            if trig[b, i]:
                assert row[i - 1] == pytest.approx(p[b, i]) and row[0] == 0
                row[i - 1] = 0
            else:
                assert row[0] == pytest.approx(a[b, i])
                row[0] = 0
            assert np.all(row == 0)
    # value states: s at BOS, frozen copy map elsewhere
    hn = np.asarray(cap["blocks.0.attn.v_out@norm"])[..., 0]
    np.testing.assert_allclose(hn[:, 1:], COPY_SCALE, rtol=1e-6)
    assert hn[0, 0] == pytest.approx(float(jnp.linalg.norm(m.blocks[0].attn.sink_value())), rel=1e-5)


def test_simple_model_ablation_and_metrics():
    m = _model()
    toks = TASK.sample(jax.random.key(4), 2, 16)
    x = np.asarray(jax.nn.one_hot(toks[:, :-1], m.cfg.vocab_size))
    _, cap = run_with_capture(m, toks[:, :-1], capture=Capture(("blocks.0.attn.out", "blocks.0.mlp.out")))
    no_attn = m(toks[:, :-1], ablate=frozenset({"blocks.0.attn"}))
    no_mlp = m(toks[:, :-1], ablate=frozenset({"blocks.0.mlp"}))
    np.testing.assert_allclose(no_attn, x + cap["blocks.0.mlp.out"], atol=1e-5)
    np.testing.assert_allclose(no_mlp, x + cap["blocks.0.attn.out"], atol=1e-5)
    met = bbprobes.dynamics_metrics(m, toks, TASK)
    assert set(bbprobes.metric_names(m, TASK)) == set(met)
    assert all(np.isfinite(float(v)) for v in met.values())
    assert float(met["value_others_l0"]) == pytest.approx(COPY_SCALE)


def test_simple_model_config_errors_and_build_model():
    with pytest.raises(ConfigError, match="n_layers"):
        SimpleModel(ModelConfig(arch="simple", n_layers=2), rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match="softmax"):
        SimpleModel(ModelConfig(arch="simple", attention="relu"), rngs=nnx.Rngs(0))
    assert isinstance(build_model(ModelConfig(arch="simple"), nnx.Rngs(0)), SimpleModel)


def test_simple_model_training_forms_a_sink():
    from toybb.train.loop import train

    cfg = cpu_preset().replace(model={"arch": "simple"}, optim={"lr": 0.01},
                               train={"steps": 300, "batch": 32, "seeds": [0, 1], "eval_batch": 64,
                                      "eval_schedule": [[50, 0]]})
    res = train(cfg, None, progress=False)
    gap, attn, drain = (res.metrics[k] for k in ("sink_logit_gap_l0", "sink_attention_l0", "value_drain_l0"))
    assert gap.shape == (len(res.steps), 2)
    assert np.all(gap[-1] > gap[0] + 1.0)  # the sink logit grows
    assert np.all(attn[-1] > attn[0] + 0.1)
    assert np.all(res.metrics["bigram_risk"][-1] < 0.5 * res.metrics["bigram_risk"][0])


# ---- fits on synthetic trajectories ------------------------------------------------------------------


def _synthetic(optimizer="adam", lr=1e-3, n=4, T=20_000, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    steps = np.concatenate([[0], np.arange(20, T + 1, 20)]).astype(float)
    s = np.maximum(steps, 1.0)
    runs = np.arange(n)
    k = 1 + 0.2 * runs  # per-seed constants
    sink = 0.5 * np.log(s)[:, None] - np.log(k)[None]
    drain = 3.0 * k[None] * s[:, None] ** -0.5
    loss = 2.0 * k[None] / s[:, None]
    rho = R.adam_linear_rate(lr)
    resid = (20 + rho * lr * s[:, None]) if optimizer == "adam" else 20 * np.sqrt(np.log(s + 2))[:, None]
    resid = resid * np.ones((1, n))
    mult = 1 + noise * rng.standard_normal((len(steps), n))
    met = {"sink_logit_gap_l0": sink + noise * rng.standard_normal(sink.shape), "value_drain_l0": drain * mult,
           "bigram_risk": loss * mult, "residual_peak_l0": resid, "loss": loss + 1.0, "backcopy_risk": loss}
    cfg = cpu_preset().replace(optim={"name": optimizer, "lr": lr}).to_dict()
    return E.Trajectory("synthetic", steps, met, list(range(n)), [lr] * n, cfg)


def _row(rows, q):
    return next(r for r in rows if r["quantity"] == q)


def test_fits_recover_known_rates_adam():
    rows = E.fit_table([_synthetic("adam", noise=0.01)])
    assert _row(rows, "sink")["median"] == pytest.approx(0.5, abs=0.02)
    assert _row(rows, "drain")["median"] == pytest.approx(-0.5, abs=0.02)
    assert _row(rows, "loss")["median"] == pytest.approx(-1.0, abs=0.02)
    r = _row(rows, "residual_slope")
    assert r["median"] == pytest.approx(r["predicted"], rel=1e-3)
    for q in ("sink", "drain", "loss"):
        x = _row(rows, q)
        assert x["min"] <= x["median"] <= x["max"] and x["n_seeds"] == 4 and x["window"] == (2000.0, 20000.0)


def test_fits_sgd_residual_is_flat():
    rows = E.fit_table([_synthetic("sgd", lr=0.1)])
    r = _row(rows, "residual")
    assert r["predicted"] == 0.0 and 0 < r["median"] < 0.1  # 1 / (2 log t) ~ 0.056 on [2e3, 2e4]


def test_predicted_curve_passes_through_anchor():
    s = np.array([100.0, 1000.0, 10_000.0])
    np.testing.assert_allclose(E.predicted_curve("sink", s, 100, 2.0), 2 + 0.5 * np.log(s / 100))
    np.testing.assert_allclose(E.predicted_curve("drain", s, 100, 1.0), [1, 10**-0.5, 0.1])
    np.testing.assert_allclose(E.predicted_curve("loss", s, 100, 1.0), [1, 0.1, 0.01])
    assert E.predicted_curve("residual", s, 100, 5.0, "sgd")[0] == pytest.approx(5.0)
    with pytest.raises(ConfigError):
        E.predicted_curve("nope", s, 1, 1)


def _write_run(path, traj: E.Trajectory):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"config": traj.config}))
    names = list(traj.metrics)
    with open(path / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "seed", "lr", *names])
        for i, s in enumerate(traj.steps):
            for r, seed in enumerate(traj.seeds):
                w.writerow([int(s), seed, traj.lrs[r], *(traj.metrics[n][i, r] for n in names)])


def test_run_folder_round_trip_and_errors(tmp_path):
    traj = _synthetic("adam", n=2, T=2000)
    _write_run(tmp_path / "run", traj)
    back = E.load_trajectory(tmp_path / "run")
    np.testing.assert_allclose(back.steps, traj.steps)
    np.testing.assert_allclose(back.metrics["value_drain_l0"], traj.metrics["value_drain_l0"], rtol=1e-6)
    assert back.optimizer == "adam" and back.seeds == [0, 1]
    with pytest.raises(ConfigError, match="not a toybb run folder"):
        E.load_trajectory(tmp_path)
    short = _synthetic("adam", n=2, T=60)
    _write_run(tmp_path / "short", short)
    with pytest.raises(ConfigError, match="too few evaluation steps"):
        E.fit_table([tmp_path / "short"])


# ---- CLI ------------------------------------------------------------------------------------------------


def test_cli_trained_on_tiny_simple_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--arch", "simple", "--lr", "0.01", "--steps", "200", "--seeds", "2", "--batch", "16",
                 "--eval-batch", "32", "--seq-len", "32", "--eval-every", "10", "--no-progress", "--no-plot",
                 "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["theory", "--trained", str(run), "--plot", str(tmp_path / "fig")]) == 0
    out = capsys.readouterr().out
    for q in ("sink", "drain", "loss", "residual"):
        assert f"  {q} " in out
    assert "simple, adam, 2 seed(s)" in out
    assert (tmp_path / "fig" / "theory_trained.png").stat().st_size > 10_000
    # the BOS value from the run's checkpoint, split by output support
    steps, s = E.simple_sink_values(run)
    assert steps.tolist() == [200] and s.shape == (1, 2, 67)
    np.testing.assert_allclose(s[..., 65:], 0.0)  # BOS / delimiter coordinates are fixed at 0
    np.testing.assert_allclose(s[..., :65].sum(-1), 0.0, atol=1e-4)  # centred over the characters
    sp = E.supported_split(s)
    assert sp["supported"].shape == (1, 2) and sp["n_supported"] + sp["n_rare"] == 65
    tot = np.linalg.norm(s, axis=-1)
    assert np.all(sp["rare"] <= tot + 1e-6)


@pytest.mark.parametrize("make, needle", [(lambda p: p / "missing", "not a folder"),
                                          (lambda p: p, "not a toybb run folder")])
def test_cli_trained_errors_one_line_exit_2(tmp_path, capsys, make, needle):
    assert main(["theory", "--trained", str(make(tmp_path))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


# ---- residual growth laws, equal-support table, the gallery entry ---------------------------------------


def test_residual_forms_pick_the_law_that_generated_the_data():
    k = np.arange(500.0, 5001.0, 100.0)
    lin = E.residual_forms(k, 20 + 0.004 * k, 500, 5000)
    assert lin["better"] == "linear" and lin["linear_slope"] == pytest.approx(0.004, rel=1e-9)
    assert lin["linear_rms"] < 1e-12 < lin["sqrtlog_rms"]
    sq = E.residual_forms(k, np.sqrt(30 * np.log(k) + 5), 500, 5000)
    assert sq["better"] == "sqrt(log)" and sq["sqrtlog_A"] == pytest.approx(30, rel=1e-9)
    assert sq["sqrtlog_rms"] < 1e-12 < sq["linear_rms"]
    with pytest.raises(ConfigError, match="at least 3 points"):
        E.residual_forms(k, k, 6000, 7000)
    with pytest.raises(ConfigError, match="equal length"):
        E.residual_forms(k, k[:-1], 500, 5000)


def test_fit_table_reports_residual_forms():
    rows = E.fit_table([_synthetic("adam", lr=1e-3, n=2)])
    assert _row(rows, "residual_linear_rms")["median"] < 1e-9 < _row(rows, "residual_sqrtlog_rms")["median"]
    g = _row(rows, "residual_growth")  # rho lr (T - T/10) on the window [2000, 20000]
    assert g["median"] == pytest.approx(R.adam_linear_rate(1e-3) * 1e-3 * 18_000, rel=1e-6)
    rows = E.fit_table([_synthetic("sgd", lr=0.1, n=2)])
    assert _row(rows, "residual_sqrtlog_rms")["median"] < _row(rows, "residual_linear_rms")["median"]


def test_mix_uniform_gives_equal_support_rows(tmp_path):
    from toybb.task.bb import load_bigram_table
    from toybb.task.build_bigram import main as build_main
    from toybb.task.build_bigram import mix_uniform

    tab = load_bigram_table("tinyshakespeare")
    mixed = mix_uniform(tab, 0.05)
    assert (tab.counts == 0).any() and (mixed.counts > 0).all()
    p = tab.counts / tab.counts.sum(1, keepdims=True)
    q = mixed.counts / mixed.counts.sum(1, keepdims=True)
    np.testing.assert_allclose(q, 0.95 * p + 0.05 / len(tab.chars), atol=2e-5)  # integer counts, ~1e6 a row
    np.testing.assert_array_equal(mixed.unigram, tab.unigram)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match="mixing weight"):
            mix_uniform(tab, bad)
    text = tmp_path / "t.txt"
    text.write_text("abcabcabd" * 20)
    assert build_main([str(text), "-o", str(tmp_path / "m.npz"), "--uniform-mix", "0.5"]) == 0
    task = BBTask(n_triggers=1, table=str(tmp_path / "m.npz"))
    assert (task.bigram[:4, :4] >= 0.5 / 4 - 1e-6).all()


def test_overlay_png_is_small_and_fit_csv_round_trips(tmp_path):
    trajs = [_synthetic("adam", n=2, T=4000), _synthetic("sgd", lr=0.03, n=2, T=4000)]
    png = E.plot_overlay(trajs, tmp_path / "o.png", labels=["Adam", "SGD"])
    assert 5_000 < png.stat().st_size < 150_000
    from PIL import Image

    from toybb import style

    with Image.open(png) as im:  # two paper columns wide
        assert im.size[0] == round(style.TWO_COLUMN * style.DPI) and im.size[1] < im.size[0]
    with pytest.raises(ConfigError, match="labels"):
        E.plot_overlay(trajs, tmp_path / "x.png", labels=["one"])
    rows = E.fit_table(trajs)
    back = list(csv.DictReader(open(E.write_fit_csv(rows, tmp_path / "f.csv"))))
    assert len(back) == len(rows)
    assert float(_row(back, "drain")["median"]) == pytest.approx(_row(rows, "drain")["median"], rel=1e-5)
    assert _row(back, "residual_growth")["predicted"] == ""


@pytest.mark.slow  # trains two tiny runs: ~20 s quiet, minutes on a loaded CPU
def test_theory_trained_gallery_entry_trains_once_and_writes_small_png(tmp_path, monkeypatch):
    from _shared import TINY
    from toybb import gallery as F

    tiny = TINY.replace(train={"steps": 40, "eval_schedule": ((2, 0),), "ckpt_every": 20})
    monkeypatch.setattr(F, "THEORY_TRAINED_LABELS", {"tf3_adam": "Adam", "tf3_sgd": "SGD"})
    monkeypatch.setattr(F, "theory_trained_configs", lambda scale, table_dir=None: {
        "tf3_adam": tiny, "tf3_sgd": tiny.replace(optim={"name": "sgd", "lr": 0.03})})
    logs = []
    paths = F.make_figures(tmp_path / "out", only=["theory_trained"], runs=tmp_path / "runs", progress=False,
                           log=logs.append)
    png, csv_path = paths
    assert png.name == "theory_trained.png" and 5_000 < png.stat().st_size < 150_000
    rows = list(csv.DictReader(open(csv_path)))
    assert {r["run"] for r in rows} == {"tf3_adam", "tf3_sgd"}
    assert {"sink", "drain", "loss", "residual", "residual_linear_rms", "residual_sqrtlog_rms"} <= {
        r["quantity"] for r in rows}
    assert sum("training" in m for m in logs) == 2
    logs.clear()  # the run cache is reused: nothing is trained again
    F.make_figures(tmp_path / "out", only=["theory_trained"], runs=tmp_path / "runs", progress=False,
                   log=logs.append)
    assert not any("training" in m for m in logs)


def test_theory_trained_configs_cpu():
    from pathlib import Path

    from toybb import gallery as F

    cfgs = F.theory_trained_configs("cpu", Path("tables"))
    a, s = cfgs["tf3_adam"], cfgs["tf3_sgd"]
    assert a.model.n_layers == s.model.n_layers == 3 and a.model.d_model == 64
    assert (a.optim.name, s.optim.name, s.optim.lr, s.optim.momentum) == ("adam", "sgd", 0.03, 0.9)
    assert cfgs["tf1_long"].train.steps >= 20_000
    assert cfgs["simple_equal_sgd"].model.arch == "simple" and "mix" in cfgs["simple_equal_sgd"].task.table
    assert cfgs["simple_equal_sgd_wd0"].optim.weight_decay == 0 < cfgs["simple_equal_sgd"].optim.weight_decay
    with pytest.raises(ConfigError, match="unknown scale"):
        F.theory_trained_configs("huge")
