"""The mitigations of sinks, drains and peaks as options of the one attention layer and the optimiser: each
option's defining property at tiny size (README, mitigations; SPEC §8), and bad combinations as one line."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from toybb.config import OptimConfig
from toybb.errors import ConfigError
from toybb.models.attention import attention
from toybb.models.capture import Capture, run_with_capture
from toybb.models.config import ModelConfig
from toybb.models.transformer import Transformer
from toybb.train.optim import make_optimizer

R = np.random.RandomState(0)
Q = jnp.asarray(R.normal(size=(2, 6, 4, 8)) * 2, jnp.float32)  # [batch, seq, heads, head_dim]
K = jnp.asarray(R.normal(size=(2, 6, 2, 8)) * 2, jnp.float32)  # two kv heads (grouped queries)
V = jnp.asarray(R.normal(size=(2, 6, 2, 8)), jnp.float32)
TOKS = jnp.asarray(R.randint(0, 60, (2, 9)), jnp.int32)


def _pattern(**kw):
    return np.asarray(attention(Q, K, V, **kw).pattern)


def _logits():
    return np.asarray(attention(Q, K, V).logits)


def test_a_sink_logit_at_minus_infinity_is_softmax_and_a_zero_one_is_an_extra_zero_key():
    soft = _pattern()
    np.testing.assert_allclose(_pattern(sink_logits=jnp.full((4,), -1e30)), soft, atol=1e-7)
    # softmax plus a zero logit = softmax over the keys and one more key of logit 0 and value 0 (off by one)
    k0, v0 = jnp.zeros((2, 1, 2, 8)), jnp.zeros((2, 1, 2, 8))
    qp, kp = jnp.arange(6), jnp.concatenate([jnp.array([-1]), jnp.arange(6)])
    extra = attention(Q, jnp.concatenate([k0, K], 1), jnp.concatenate([v0, V], 1), q_pos=qp, k_pos=kp)
    zero = attention(Q, K, V, sink_logits=jnp.zeros((4,)))
    np.testing.assert_allclose(np.asarray(zero.pattern), np.asarray(extra.pattern)[..., 1:], atol=1e-6)
    np.testing.assert_allclose(np.asarray(zero.out), np.asarray(extra.out), atol=1e-5)
    assert (np.asarray(zero.pattern).sum(-1) < 1).all()
    # a learned logit per head weighs its sink as exp(s_h): a larger s_h leaves less for the keys
    rows = _pattern(sink_logits=jnp.array([-2.0, 0.0, 2.0, 4.0])).sum(-1)
    assert (np.diff(rows.mean(axis=(0, 2))) < 0).all()


def test_clipped_softmax_with_neutral_parameters_is_softmax_and_clips_otherwise():
    soft = _pattern()
    np.testing.assert_allclose(_pattern(clip=(0.0, 1.0)), soft, atol=1e-7)
    clipped = _pattern(clip=(-0.03, 1.03))
    vis = np.tril(np.ones((6, 6), bool))
    want = np.where(vis, np.clip(1.06 * soft - 0.03, 0, 1), 0)
    np.testing.assert_allclose(clipped, want, atol=1e-6)
    assert (clipped[..., vis] == 0).any()  # small weights become exact zeros


def test_sigmoid_weights_are_independent_of_the_other_keys_and_normalised_sums_to_one():
    x = _logits()
    vis = np.tril(np.ones((6, 6), bool))
    sig = _pattern(kind="sigmoid", sigmoid_bias=-1.5)
    np.testing.assert_allclose(sig, np.where(vis, 1 / (1 + np.exp(-(x - 1.5))), 0), atol=1e-6)
    norm = _pattern(kind="sigmoid_norm")
    np.testing.assert_allclose(norm.sum(-1), 1.0, atol=1e-6)


def test_softpick_matches_its_formula_and_gives_no_weight_to_non_positive_logits():
    x = _logits()
    vis = np.tril(np.ones((6, 6), bool))
    d = np.where(vis, np.expm1(x.astype(np.float64)), 0)
    want = np.maximum(d, 0) / (np.abs(d).sum(-1, keepdims=True) + 1e-6)
    sp = _pattern(kind="softpick")
    np.testing.assert_allclose(sp, want, rtol=1e-5, atol=1e-7)
    assert (sp[(x <= 0) & vis] == 0).all() and (sp.sum(-1) <= 1 + 1e-6).all()
    # stable at large logits (computed against the row maximum)
    big = np.asarray(attention(Q * 40, K, V, kind="softpick").pattern)
    assert np.isfinite(big).all() and (big.sum(-1) <= 1 + 1e-6).all()


def _toy(**kw):
    return Transformer(ModelConfig(d_model=16, n_heads=2, n_layers=2, max_positions=16, **kw), rngs=nnx.Rngs(0))


def test_a_gate_of_one_half_halves_the_attention_output_of_the_ungated_layer():
    plain = _toy()
    for gate in ("head", "element"):
        gated = _toy(attn_gate=gate)
        # the same weights but the gate's, and a gate of sigmoid(0) = 1/2
        for l in range(2):
            for n in ("wq", "wk", "wv", "wo"):
                getattr(gated.blocks[l].attn, n).set_value(getattr(plain.blocks[l].attn, n).get_value())
            gated.blocks[l].attn.w_gate.set_value(jnp.zeros_like(gated.blocks[l].attn.w_gate.get_value()))
        site = "blocks.0.attn.out"
        a = run_with_capture(plain, TOKS, capture=Capture(site))[1][site]
        b = run_with_capture(gated, TOKS, capture=Capture(site))[1][site]
        np.testing.assert_allclose(np.asarray(b), 0.5 * np.asarray(a), atol=1e-5, err_msg=gate)


@pytest.mark.parametrize("kw", [dict(attention="sigmoid", sigmoid_bias=-2.0), dict(attention="sigmoid_norm"),
                                dict(attention="softpick"), dict(attn_sink="zero"), dict(attn_sink="learned"),
                                dict(attn_gate="head"), dict(softmax_clip=(-0.02, 1.02))])
def test_every_option_on_a_pretrained_family_configuration(kw):
    """Each option builds on a tiny random Llama-type configuration and gives finite logits and gradients."""
    cfg = ModelConfig(arch="llama", vocab_size=61, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=8,
                      mlp_dim=24, **kw)
    m = Transformer(cfg, rngs=nnx.Rngs(1))
    graphdef, params = nnx.split(m)

    def loss(p):
        return jnp.mean(jax.nn.log_softmax(nnx.merge(graphdef, p)(TOKS)) ** 2)

    val, grads = jax.value_and_grad(loss)(params)
    assert np.isfinite(float(val)) and all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_muon_orthogonalises_the_matrices_and_steps_the_rest_with_adam():
    m = _toy()
    _, p = nnx.split(m)
    g = jax.tree.map(lambda x: jax.random.normal(jax.random.key(1), x.shape), p)
    tx = make_optimizer(OptimConfig(name="muon"))
    u, _ = tx.update(g, tx.init(p), p)
    sv = np.linalg.svd(np.asarray(u["blocks"][0]["mlp"]["w_in"][...]), compute_uv=False)
    assert sv[-1] / sv[0] > 0.6  # Newton-Schulz flattens the spectrum of the matrix update
    # the norms' first step is Adam's: the same size on every coordinate, of the order of its learning rate
    a = np.abs(np.asarray(u["ln_f"]["scale"][...]))
    np.testing.assert_allclose(a, a[0], rtol=1e-3)
    assert 2e-4 < a[0] < 1e-3


@pytest.mark.parametrize("kw, what", [
    (dict(attention="relu", attn_sink="zero"), "attn_sink and model.softmax_clip change softmax"),
    (dict(softmax_clip=(0.1, 1.0)), "gamma <= 0 and zeta >= 1"),
    (dict(sigmoid_bias=-1.0), "sigmoid_bias applies to sigmoid attention"),
    (dict(attn_gate="head", no_attention=(0,)), "need a layer with attention"),
    (dict(arch="simple", attention="sigmoid"), "simple model"),
    (dict(attn_gate="channel"), "model.attn_gate must be one of"),
])
def test_options_that_do_not_fit_are_one_line(kw, what):
    with pytest.raises(ConfigError, match=what):
        ModelConfig(**kw)


def test_the_mitigation_table_from_the_runs_metrics(tmp_path, capsys):
    """`toybb mitigations`: one row per mitigation with the median over seeds of the runs' last metrics."""
    import csv

    from toybb.cli import main
    from toybb.records import load_metrics

    out = tmp_path / "t"
    assert main(["mitigations", "--out", str(out), "--rows", "softmax,zero_sink", "--layers", "1", "--seeds", "2",
                 "--steps", "20", "--no-progress"]) == 0
    rows = list(csv.DictReader(open(out / "mitigations.csv")))
    assert [r["mitigation"] for r in rows] == ["softmax", "zero_sink"] and {r["seeds"] for r in rows} == {"2"}
    groups = sorted((out / "1layer" / "groups").iterdir())
    _, m = load_metrics(groups[0])
    last = [r for r in m if int(r["step"]) == 20]
    want = np.median([float(r["sink_attention_excl0_l0"]) for r in last])
    np.testing.assert_allclose(float(rows[0]["attn_sink"]), want, rtol=1e-3)
    assert "| softmax |" in (out / "mitigations.md").read_text() and (out / "mitigations.png").stat().st_size > 0
    capsys.readouterr()
    assert main(["mitigations", "--out", str(tmp_path / "u"), "--rows", "softmax,nope", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown mitigation row(s) ['nope']" in err
