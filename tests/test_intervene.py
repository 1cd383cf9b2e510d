"""`toybb intervene` on a toy run: the table against the unmodified model, the old fixed interventions
as instances of the general one, and bad input as one-line errors."""

from __future__ import annotations

import csv

import pytest
from _shared import TINY as CFG, trainer

from toybb.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from toybb.train.loop import train

    d = tmp_path_factory.mktemp("iv") / "run"
    train(CFG, d, progress=False, write_figure=False, trainer=trainer(CFG))
    return d


def _rows(out):
    with open(out / "interventions.csv") as f:
        return list(csv.DictReader(f))


def test_table_against_the_unmodified_model(run, tmp_path, capsys):
    out = tmp_path / "iv"
    assert main(["intervene", str(run), "--site", "blocks.*.mlp.out", "--op", "zero", "--each", "layer",
                 "--edit", "blocks.1.resid_post:patch:source=a", "--edit", "blocks.0.attn.z:scale:head=0;value=1",
                 "--domain", "a=task:0", "--domain", "b=task:1", "--capture", "blocks.*.resid_post@norm",
                 "--samples", "8", "--out", str(out)]) == 0
    rows = _rows(out)
    assert (out / "interventions.png").is_file() and (out / "config.json").is_file()
    by = {(r["domain"], r["intervention"]): r for r in rows}
    assert len(rows) == 2 * 5 and float(by["a", "none"]["delta_nll"]) == 0.0
    # patching a run with its own activations, or scaling by 1, changes nothing
    for name in ("blocks.1.resid_post patch [layer=1]", "blocks.0.attn.z scale [head=0,layer=0]"):
        assert float(by["a", name]["nll"]) == pytest.approx(float(by["a", "none"]["nll"]), abs=1e-6)
    # patching b's last residual stream from a gives a's loss on b's targets: not b's own loss
    assert abs(float(by["b", "blocks.1.resid_post patch [layer=1]"]["delta_nll"])) > 1e-3
    # the zero-MLP rows equal the old `ablate` interventions of the final probe
    import jax
    import jax.numpy as jnp

    from toybb.probes import metrics as M
    from toybb.train.runs import load_models, model_of

    cfg, tr, state, _ = load_models(run)
    model = model_of(tr, state, 0)
    toks = tr.task.sample(jax.random.key(0), 8, cfg.task.seq_len)
    nll = M.token_nll(model(toks[:, :-1], ablate=frozenset({"blocks.0.mlp"})), toks[:, 1:])
    assert float(by["a", "blocks.*.mlp.out zero [layer=0]"]["nll"]) == pytest.approx(float(jnp.mean(nll)), rel=1e-5)
    assert float(by["a", "none"]["blocks.1.resid_post@norm:pos0"]) > 0
    assert "loss" in capsys.readouterr().out


@pytest.mark.parametrize("argv, match", [
    (["--site", "blocks.*.attn.zz", "--op", "zero"], "no site matches 'blocks.*.attn.zz'"),
    (["--site", "blocks.0.attn.z", "--op", "zero", "--head", "7"], "head 7 is out of range"),
    (["--site", "blocks.*.attn.z", "--op", "zero", "--layer", "9"], "layer 9 is out of range"),
    (["--site", "blocks.0.mlp.out", "--op", "zero", "--capture", "blocks.*.resid_post@nrm"], "unknown capture reduction"),
    (["--site", "blocks.0.resid_post", "--op", "scale"], "needs --value"),
    (["--site", "blocks.0.attn.v_out", "--op", "zero"], "read-only"),
    (["--edit", "blocks.0.mlp.out"], "SITE:OP"),
    (["--edit", "blocks.0.mlp.out:zero:hed=1"], "is not NAME=VALUE"),
    (["--edit", "blocks.0.resid_post:patch:source=zz"], "source 'zz' is not one of the domains"),
    (["--site", "blocks.0.mlp.out", "--op", "zero", "--capture", "blocks.0.attn.pattern"], "one number per position"),
    (["--site", "blocks.0.mlp.out", "--op", "zero", "--domain", "x=text"], "NAME=task"),
    (["--site", "blocks.0.mlp.out", "--op", "zero", "--domain", "x=task:99999999999999999999"],
     "the seed must be an integer from 0 to 4,294,967,295"),
    (["--op", "zero"], "--site and --op go together"),
])
def test_bad_input_is_one_line_exit_2(run, tmp_path, capsys, monkeypatch, argv, match):
    import toybb.intervene

    def refuse(*a, **k):
        raise AssertionError("loaded the checkpoint before checking the input")

    monkeypatch.setattr(toybb.intervene, "load_models", refuse)  # every input is checked before it loads
    code = main(["intervene", str(run), "--samples", "8", "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and match in err and "\n" not in err and "Traceback" not in err


def test_run_folder_without_model(tmp_path, capsys):
    assert main(["intervene", str(tmp_path / "nothing"), "--site", "embed", "--op", "zero", "--domain", "a=x",
                 "--out", str(tmp_path / "o")]) == 2
    assert "no run folder, checkpoint or offline model" in capsys.readouterr().err
