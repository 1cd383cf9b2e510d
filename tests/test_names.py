"""One vocabulary (toybb.names): the README's table is the module's; old run folders read under the new
names with a one-line note; metric functions write only current names."""

from __future__ import annotations

from pathlib import Path

import pytest

from toybb import names
from toybb.records import read_csv

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_table_is_the_vocabulary():
    assert names.markdown_table() in README.read_text()
    assert len(set(names.NAMES)) == len(names.NAMES)


@pytest.mark.parametrize("old, new", [
    ("massive_norm_l0", "residual_excess_l0"), ("massive_norm_l2h1", "residual_excess_l2h1"),
    ("sink_score_prose", "sink_attention_excl0_prose"), ("logit_gap_code", "sink_logit_gap_code"),
    ("value_pos0_prose", "value_drain_prose"), ("resid_pos0_code", "residual_peak_code"),
    ("top1_prose", "massive_top1_prose"), ("median_code", "massive_median_code"), ("bos_norm", "residual_peak"),
    ("blocks.3.attn.head_out@norm:pos0", "blocks.3.attn.v_out@norm:pos0"),
    # current names, and words that only look like old ones, stay
    ("median", "median"), ("sink_logit_gap_l0", "sink_logit_gap_l0"), ("residual_others_l0", "residual_others_l0"),
    ("value_others_prose", "value_others_prose"), ("step", "step"),
])
def test_canonical(old, new):
    assert names.canonical(old) == new


def test_old_metrics_csv_reads_with_new_names(tmp_path, capsys):
    p = tmp_path / "metrics.csv"
    p.write_text("step,seed,lr,massive_norm_l0,residual_peak_l0\n0,0,0.004,1.5,9.0\n")
    rows = read_csv(p)
    assert rows == [{"step": "0", "seed": "0", "lr": "0.004", "residual_excess_l0": "1.5", "residual_peak_l0": "9.0"}]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "massive_norm_l0 -> residual_excess_l0" in err[0]


def test_toy_metrics_use_only_current_names():
    """Every column the toy dynamics probe writes is a vocabulary name plus a layer/head suffix."""
    import re

    from flax import nnx

    from toybb.config import ModelConfig
    from toybb.models.transformer import Transformer
    from toybb.probes.bb import metric_names
    from toybb.task import BBTask

    task = BBTask()
    model = nnx.eval_shape(lambda: Transformer(ModelConfig(vocab_size=task.vocab_size, d_model=16, n_layers=2,
                                                               n_heads=2), rngs=nnx.Rngs(0)))
    cols = metric_names(model, task)
    bases = {re.sub(r"_l\d+(h\d+)?$", "", c) for c in cols}
    known = set(names.NAMES)
    assert bases <= known, sorted(bases - known)
    assert all(names.canonical(c) == c for c in cols)


def test_vocabulary_fields_are_consistent():
    """The fields that generate the reference columns, compare labels and the dynamics panels."""
    for m in names.METRICS:
        assert m.per_layer in ("", "in", "after") and m.panel in ("", "linear", "log"), m.name
        assert not m.others or names.METRIC[m.others].per_layer == m.per_layer, m.name
        assert not m.panel or m.unit, m.name
    assert names.column("value_drain", 2, 1) == "value_drain_l2h1"
    assert names.column("backcopy_risk", 2) == "backcopy_risk"  # one value per model
    with pytest.raises(KeyError):
        names.column("value_drian", 0)
