"""Checkpoint series: toy checkpoints give the metrics the run logged at those steps; tiny HF
checkpoints give attention on BOS equal to transformers' own attention weights; bad input exits 2."""

import csv
import shutil

import numpy as np
import pytest

from toybb.cli import main
from toybb.series import run_series, step_from_path
from toybb.train.loop import train

from _shared import TINY as CFG, TRAINERS, trainer


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def toy_series(tmp_path_factory):
    """One run trained to step 10 then continued to 20; its folder copied at both steps."""
    root = tmp_path_factory.mktemp("toy")
    run = root / "run"
    tr = trainer(CFG)  # one compilation for both segments (and the other tests' tiny runs)
    train(CFG, run, progress=False, write_figure=False, trainer=tr)
    shutil.copytree(run, root / "step10")
    train(CFG.replace(train={"steps": 20}), run, progress=False, write_figure=False, trainer=tr)
    shutil.copytree(run, root / "step20")
    return root


def test_step_from_path():
    assert step_from_path("/x/pythia/step143000") == 143000
    assert step_from_path("runs/a/global_step20/model") == 20
    assert step_from_path("out/checkpoint-500") == 500
    assert step_from_path("runs/default") is None


def test_toy_series_matches_logged_metrics(toy_series, tmp_path):
    csv_path, png = run_series([str(toy_series / "step10"), str(toy_series / "step20")], tmp_path, log=lambda s: None,
                               trainers=TRAINERS)
    rows = _rows(csv_path)
    assert [(int(r["step"]), int(r["seed"])) for r in rows] == [(10, 0), (10, 1), (20, 0), (20, 1)]
    logged = {(int(r["step"]), int(r["seed"])): r for r in _rows(toy_series / "run" / "metrics.csv")}
    for r in rows:
        ref = logged[(int(r["step"]), int(r["seed"]))]
        for k in ("loss", "sink_attention_l0", "value_drain_l0", "residual_peak_l0"):
            np.testing.assert_allclose(float(r[k]), float(ref[k]), rtol=1e-5)
    assert png.exists() and png.stat().st_size > 10_000


def test_toy_checkpoint_file_uses_its_own_step(toy_series, tmp_path):
    csv_path, _ = run_series([str(toy_series / "run" / "checkpoint.npz")], tmp_path, log=lambda s: None,
                              trainers=TRAINERS)
    assert {int(r["step"]) for r in _rows(csv_path)} == {20}


@pytest.fixture(scope="module")
def hf_series(tmp_path_factory):
    pytest.importorskip("torch")
    from _tiny_hf import make_tiny

    root = tmp_path_factory.mktemp("hf")
    models = {s: make_tiny("llama_gqa", str(root / f"step{s}"), seed=i) for i, s in enumerate((100, 2000))}
    return root, models


def test_hf_series_sink_attention_matches_transformers(hf_series, tmp_path):
    import torch

    from toybb.series import FIXED_TEXT, llm_tokens

    root, models = hf_series
    csv_path, png = run_series([str(root / "step100"), str(root / "step2000")], tmp_path, log=lambda s: None)
    rows = _rows(csv_path)
    assert [int(r["step"]) for r in rows] == [100, 2000] and png.exists()

    class _Pre:  # the probe's token ids, rebuilt for the reference
        tokenizer = None
        cfg = type("C", (), {"bos_token_id": models[100].config.bos_token_id, "vocab_size": 53})

    tokens = torch.tensor(llm_tokens(_Pre, FIXED_TEXT)).long()
    for r, step in zip(rows, (100, 2000)):
        with torch.no_grad():
            out = models[step](tokens, output_attentions=True, output_hidden_states=True)
        for l, att in enumerate(out.attentions):  # [batch, heads, q, k]
            np.testing.assert_allclose(float(r[f"sink_attention_excl0_l{l}"]), att[0, :, 1:, 0].mean().item(), rtol=1e-4)
        # residual norm at BOS after the last layer, before the final norm
        assert float(r["residual_peak_l0"]) == pytest.approx(out.hidden_states[1][0, 0].norm().item(), rel=1e-4)
        assert int(r["n_tokens"]) == tokens.shape[1]


@pytest.mark.parametrize("extra, needle", [
    (["--steps", "1,2,3"], "--steps has 3"),
    (["--steps", "x"], "comma-separated integers"),
])
def test_series_bad_input(toy_series, tmp_path, capsys, extra, needle):
    argv = ["series", str(toy_series / "step10"), str(toy_series / "step20"), "--out", str(tmp_path), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_series_unknown_path_and_mixed_kinds(toy_series, hf_series, tmp_path, capsys):
    assert main(["series", str(tmp_path / "nothing"), "--out", str(tmp_path)]) == 2
    assert "not a toybb run folder" in capsys.readouterr().err
    assert main(["series", str(toy_series / "step10"), str(hf_series[0] / "step100"), "--out", str(tmp_path)]) == 2
    assert "mix of toy and LLM" in capsys.readouterr().err
