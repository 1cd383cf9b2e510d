"""LLM probes on hand-built tiny models whose answers are known: a head wired to attend only to key 0,
a planted massive activation, streaming equals one batch, head interventions equal manual edits."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from toybb.models.config import ModelConfig
from toybb.models.transformer import Transformer
from toybb.probes import llm as P
from toybb.probes.corpus import iter_batches
from toybb.probes.metrics import classify_dormant

# learned positions (no rotary) so a head's logits can be wired by hand
CFG = ModelConfig(arch="llama", vocab_size=24, d_model=16, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=4,
                mlp_dim=24, max_positions=32, position="learned", qkv_bias=True)
BOS = 0
SINK_HEAD = (1, 2)  # layer 1, head 2 attends only to BOS
MASSIVE = (1, 5, 3e4)  # after layer 1, dim 5 on the BOS token is large (3e4 for a unit-norm BOS input)


def _set(var, arr):
    var.set_value(jnp.asarray(arr, jnp.float32))


@pytest.fixture(scope="module")
def model():
    m = Transformer(CFG, rngs=nnx.Rngs(0))
    emb = np.array(m.token_embed.get_value())
    emb[:, 0] = 0.0
    emb[BOS] = 0.0
    emb[BOS, 0] = 1.0  # only BOS carries dim 0 (the RMS norm scales it to sqrt(d) = 4)
    _set(m.token_embed, emb)
    _set(m.pos_embed, np.array(m.pos_embed.get_value()) * (np.arange(16) != 0))
    for blk in m.blocks:  # nothing else writes dim 0, so it stays a BOS detector in every layer
        _set(blk.attn.wo, np.array(blk.attn.wo.get_value()) * (np.arange(16) != 0))
        _set(blk.mlp.w_out, np.array(blk.mlp.w_out.get_value()) * (np.arange(16) != 0))
    l, h = SINK_HEAD
    att = m.blocks[l].attn
    kv = h // 2  # head 2 reads kv head 1
    wq, bq = np.array(att.wq.get_value()), np.array(att.bq.get_value())
    wk = np.array(att.wk.get_value())
    wq[:, h], bq[h] = 0.0, 10.0  # constant query
    wk[:, kv] = 0.0
    wk[0, kv] = 10.0  # key = 40 * ones on BOS, 0 elsewhere (+ bias): logit gap 4 * 10 * 40 / 2 = 800
    _set(att.wq, wq), _set(att.bq, bq), _set(att.wk, wk), _set(att.bk, np.zeros((2, 4)))
    # planted massive activation: the layer-1 MLP writes 3e4 into dim 5 of the BOS token only
    lm, dim, val = MASSIVE
    mlp = m.blocks[lm].mlp
    wg, wu, wd = (np.array(v.get_value()) for v in (mlp.w_gate, mlp.w_in, mlp.w_out))
    wg[:, 0] = wu[:, 0] = 0.0
    wg[0, 0] = wu[0, 0] = 6.0  # BOS: silu(6 x0) * 6 x0 in hidden unit 0, others exactly 0
    wd[0] = 0.0
    wd[0, dim] = val / (12.0 * 12.0 / (1 + np.exp(-12.0)))
    _set(mlp.w_gate, wg), _set(mlp.w_in, wu), _set(mlp.w_out, wd)
    return m


def _tokens(n, t=16, seed=0):
    r = np.random.RandomState(seed).randint(1, CFG.vocab_size, (n, t))
    r[:, 0] = BOS
    return r.astype(np.int32)


@pytest.fixture(scope="module")
def stats(model):
    return P.probe_domain(model, iter_batches(iter(_tokens(6)), 6, 4))


def test_wired_sink_head_has_score_one_and_is_dormant(stats):
    st = stats
    score = st.mean("sink_attention_excl0")
    l, h = SINK_HEAD
    assert score[l, h] == pytest.approx(1.0, abs=1e-5)
    assert bool(classify_dormant(score[l, h]))
    assert score[0].max() < 0.89  # random heads are not sinks
    assert st.mean("key_attn")[l, h, 0] == pytest.approx(1.0, abs=1e-5)
    assert st.mean("sink_logit_gap")[l, h] > 100


def test_planted_massive_activation_found(stats):
    st = stats
    info = st.massive()
    l, dim, val = MASSIVE
    assert info["first_layer"] == l
    assert info["dims"][0] == dim
    assert info["dim_mean"][0] > 2000  # the BOS is partly normalised away before the MLP: not exactly val
    assert info["dim_mean"][0] == pytest.approx(info["massive_top"][l][0], rel=1e-4)  # the same value on every sample
    assert info["tokens"] == [(BOS, 6)]
    assert info["dims"] == [dim] and info["massive_layers"] == [1, 2]
    assert st.mean("residual_peak")[l] > 50 * st.mean("residual_others")[l]


def test_streaming_mean_equals_one_batch(model):
    toks = _tokens(7, seed=3)
    streamed = P.probe_domain(model, iter_batches(iter(toks), 7, 4))  # 4 + 3 (padded)
    whole = P.probe_domain(model, iter_batches(iter(toks), 7, 8))  # one batch, padded
    for k in ("sink_attention_excl0", "sink_logit_gap", "value_drain", "value_others", "key_attn", "resid_pos", "massive_top", "massive_median",
              "tok_attn", "residual_others"):
        np.testing.assert_allclose(streamed.mean(k), whole.mean(k), rtol=2e-4, atol=1e-5, err_msg=k)
    assert streamed.n == whole.n == 7
    assert streamed.ppl == pytest.approx(whole.ppl, rel=1e-5)


def test_head_zero_equals_manual_weight_edit(model):
    toks = _tokens(4, seed=5)
    batches = [(toks, np.ones(4, bool))]
    l, h = 2, 1
    got = P.edited_nll(model, batches, P.head_edit_for(CFG, l, h, "zero"))
    manual = nnx.clone(model)
    wo = np.array(manual.blocks[l].attn.wo.get_value())
    wo[h] = 0.0
    _set(manual.blocks[l].attn.wo, wo)
    assert got == pytest.approx(P.edited_nll(manual, batches), rel=1e-5)
    assert got != pytest.approx(P.edited_nll(model, batches), rel=1e-4)


def test_to_bos_is_identity_on_a_sink_head(model):
    toks = _tokens(4, seed=6)
    batches = [(toks, np.ones(4, bool))]
    base = P.edited_nll(model, batches)
    assert P.edited_nll(model, batches, P.head_edit_for(CFG, *SINK_HEAD, "to_bos")) == \
        pytest.approx(base, rel=1e-5)
    assert P.edited_nll(model, batches, P.head_edit_for(CFG, 0, 0, "to_bos")) != \
        pytest.approx(base, rel=1e-4)


def test_massive_zero_vs_mean(model, stats):
    toks = _tokens(4, seed=2)
    info = stats.massive()
    batches = [(toks, np.ones(4, bool))]
    base = P.edited_nll(model, batches)
    mean = P.edited_nll(model, batches, P.massive_edit(info, "mean"))
    assert mean == pytest.approx(base, rel=1e-3)  # the value is the same on every sample
    zero_x = model(jnp.asarray(toks), edits=P.massive_edit(info, "zero"))
    assert not np.allclose(np.asarray(zero_x), np.asarray(model(jnp.asarray(toks))))


class _CharTokenizer:
    """Characters to ids 1..23 (0 is the BOS), for a probe run of the wired model on real text."""

    bos_id, add_bos = BOS, False

    def encode(self, text, add_bos=False):
        return ([BOS] if add_bos else []) + [1 + ord(c) % (CFG.vocab_size - 1) for c in text]

    def decode(self, ids):
        return "".join(chr(96 + i) for i in ids)


def test_probe_report_states_the_rule_and_what_was_edited(model, tmp_path):
    """heads.csv has an active/dormant column by the stated 0.89 rule, metrics.json separates the rule's
    heads from the ranking, and the printed summary gives one perplexity and names the edited entries."""
    import csv
    import json
    from toybb.llm.load import Pretrained
    from toybb.probes.corpus import Domain
    from toybb.probes.report import DORMANT_RULE, ProbeSettings, run_probe, summary_lines

    pre = Pretrained(model, CFG, _CharTokenizer(), "wired", "hf")
    settings = ProbeSettings(samples=4, seq_len=16, batch=4, k_first=4, intervene_samples=2, intervene_heads=2)
    summary = run_probe(pre, [Domain("prose", "pride"), Domain("code", "stdlib")], settings, tmp_path, progress=False)
    rows = {(int(r["layer"]), int(r["head"])): r for r in csv.DictReader(open(tmp_path / "heads.csv"))}
    assert rows[SINK_HEAD]["state_prose"] == rows[SINK_HEAD]["state_code"] == "dormant"
    for r in rows.values():
        for n in ("prose", "code"):
            assert r[f"state_{n}"] == ("dormant" if float(r[f"sink_attention_excl0_{n}"]) >= 0.89 else "active")
    sel = json.loads((tmp_path / "metrics.json").read_text())["selective"]
    assert sel["rule"] == DORMANT_RULE and "0.89" in DORMANT_RULE
    assert [SINK_HEAD] != [(h["layer"], h["head"]) for h in sel["dormant_on_prose_active_on_code"]]
    assert len(sel["largest_prose_minus_code"]) == 5
    lines = summary_lines(summary)
    assert lines[0].startswith("prose: perplexity ") and lines[0].count("perplexity") == 1
    assert "blocks.1.resid_post dims [5]" in lines[0] and "to zero changes the loss by" in lines[0]
