"""The active/dormant probe of SPEC §3 on toy models: the probe sequences, the attention read from
them, and its in-distribution counterpart (attention on BOS per query token on natural sequences)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from toybb.config import ModelConfig
from toybb.models.capture import Capture, run_with_capture
from toybb.models.transformer import Transformer
from toybb.probes import bb as bbprobes
from toybb.task.bb import BBTask

TASK = BBTask(n_triggers=3)


def test_probe_rows_are_bos_all_non_triggers_then_v():
    probe = bbprobes.dormancy_probe_tokens(TASK, 64)
    n = len(TASK.chars)
    non_trig = [c for c in range(n) if not TASK.is_trigger[c]]
    assert len(non_trig) == 62 and probe.shape == (n, 64)  # 1 + 62 + 1: exactly the trained length
    for v in range(n):  # v itself stays in the body (SPEC: all non-trigger tokens), in id order
        assert probe[v].tolist() == [TASK.bos_id] + non_trig + [v]
    short = bbprobes.dormancy_probe_tokens(TASK, 16)  # cut to the trained positions
    assert short.shape == (n, 16) and short[5].tolist() == [TASK.bos_id] + non_trig[:14] + [5]


def _model(**kw):
    return Transformer(ModelConfig(d_model=16, n_heads=2, max_len=16, **kw), rngs=nnx.Rngs(3))


def test_last_query_attention_is_the_softmax_pattern_on_key0():
    m = _model()
    probe = jnp.asarray(bbprobes.dormancy_probe_tokens(TASK, 16)[::4])
    got = bbprobes.sink_attention_of_last_query(m, probe)  # [layers, tokens, heads]
    _, cap = run_with_capture(m, probe, capture=Capture(("blocks.0.attn.pattern",)))
    pat = np.asarray(cap["blocks.0.attn.pattern"])  # [tokens, heads, q, k], rows sum to 1
    np.testing.assert_allclose(pat.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(got[0]), pat[:, :, -1, 0], rtol=1e-6)


def test_bos_attention_by_token_matches_a_loop():
    m = _model()
    toks = TASK.sample(jax.random.key(0), 4, 15)[:, :-1]
    n = len(TASK.chars)
    mean, count = bbprobes.bos_attention_by_token(m, toks, n)
    _, cap = run_with_capture(m, toks, capture=Capture(("blocks.0.attn.pattern",)))
    on_bos = np.asarray(cap["blocks.0.attn.pattern"])[:, :, :, 0]  # [b, h, q]
    t = np.asarray(toks)
    for v in range(n):
        sel = np.argwhere(t[:, 1:] == v)  # queries 1.. only: the BOS query is left out
        assert count[v] == len(sel)
        if len(sel) == 0:
            assert np.isnan(mean[0, v]).all()
        else:
            want = np.mean([on_bos[b, :, q + 1] for b, q in sel], axis=0)
            np.testing.assert_allclose(np.asarray(mean[0, v]), want, rtol=1e-5)


def test_bos_attention_by_token_with_a_sink_token_reads_the_bos():
    m = _model(sink_token=True)
    toks = TASK.sample(jax.random.key(1), 3, 14)[:, :-1]
    mean, _ = bbprobes.bos_attention_by_token(m, toks, len(TASK.chars))
    _, cap = run_with_capture(m, toks, capture=Capture(("blocks.0.attn.pattern",)))
    on_bos = np.asarray(cap["blocks.0.attn.pattern"])[:, :, 1:, 0]  # the sites skip the slot; skip the BOS query
    v = int(np.asarray(toks)[0, 1])
    sel = np.asarray(toks)[:, 1:] == v
    np.testing.assert_allclose(np.asarray(mean[0, v]), on_bos.transpose(0, 2, 1)[sel].mean(0), rtol=1e-5)
