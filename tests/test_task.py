"""The Bigram-Backcopy task (SPEC §1): packaged table, sampler rules and statistics, oracle, errors."""

import math
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toybb.errors import ConfigError
from toybb.task import BBTask, build_table, load_bigram_table
from toybb.task.build_bigram import build_table_from_file, main as build_main, save_table

CORPUS = Path(__file__).resolve().parents[1] / "toybb/corpora/shakespeare.txt"  # the first 100k characters
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def task3():
    return BBTask(n_triggers=3)


@pytest.fixture(scope="module")
def big_sample(task3):
    """Four default-size batches (4 x 512 x 257 tokens) as numpy int32 [2048, 257]."""
    keys = jax.random.split(jax.random.key(20240601), 4)
    return np.concatenate([np.asarray(task3.sample(k, 512, 256)) for k in keys])


# ---- tables ------------------------------------------------------------------------------------
def test_packaged_table_contains_the_rebuild_of_its_corpus_excerpt():
    """The built-in `shakespeare` excerpt is the corpus's first 99,843 characters: its rebuilt table is the
    packaged one's restricted to a prefix: every count at most the packaged count, one bigram per character."""
    built = build_table_from_file(CORPUS)
    packaged = load_bigram_table("tinyshakespeare")
    text = CORPUS.read_text(encoding="utf-8")
    assert set(built.chars) <= set(packaged.chars)
    idx = [packaged.chars.index(c) for c in built.chars]
    sub = packaged.counts[np.ix_(idx, idx)]
    assert (built.counts <= sub).all() and (built.unigram <= packaged.unigram[idx]).all()
    assert built.unigram.sum() == len(text) and built.counts.sum() == len(text) - 1


def test_packaged_table_facts():
    tab = load_bigram_table()
    assert len(tab.chars) == 65 and list(tab.chars) == sorted(set(tab.chars))
    assert tab.unigram.sum() == 1_115_394
    t3, t5 = BBTask(n_triggers=3), BBTask(n_triggers=5)
    assert [t3.chars[i] for i in t3.triggers] == [" ", "e", "t"]
    assert [t5.chars[i] for i in t5.triggers] == [" ", "e", "t", "o", "a"]
    assert (REPO / "toybb/task/data/tinyshakespeare_bigram.npz").stat().st_size < 16_000


def test_task_arrays(task3):
    t = task3
    V = 67
    assert (t.vocab_size, t.bos_id, t.delim_id, len(t.chars)) == (V, 65, 66, 65)
    assert t.bigram.shape == (V, V) and t.bigram.dtype == np.float64
    assert t.unigram.shape == t.first_dist.shape == t.is_trigger.shape == (V,)
    assert t.triggers.dtype == np.int32 and t.is_trigger.dtype == np.bool_
    np.testing.assert_allclose(t.bigram.sum(1), 1.0, rtol=1e-12)
    assert not t.bigram[:, 65:].any()  # nothing transitions into BOS or the delimiter
    np.testing.assert_array_equal(t.bigram[65], t.unigram)
    np.testing.assert_array_equal(t.bigram[66], t.unigram)
    assert np.isclose(t.unigram.sum(), 1) and not t.unigram[65:].any()
    assert np.isclose(t.first_dist.sum(), 1) and not t.first_dist[t.is_trigger].any()
    np.testing.assert_allclose(t.first_dist[~t.is_trigger], t.unigram[~t.is_trigger] / t.unigram[~t.is_trigger].sum())
    assert np.flatnonzero(t.is_trigger).tolist() == sorted(t.triggers.tolist())
    with pytest.raises(ValueError):  # cached tables are read-only
        t.bigram[0, 0] = 1.0


def test_task_is_hashable_static_value(task3):
    assert BBTask(3, True, "tinyshakespeare") == task3 and hash(BBTask()) == hash(task3)
    assert BBTask(n_triggers=5) != task3 and BBTask(bos=False) != task3
    f = jax.jit(lambda task, key: task.sample(key, 2, 4), static_argnums=0)
    np.testing.assert_array_equal(f(task3, jax.random.key(0)), task3.sample(jax.random.key(0), 2, 4))


# ---- sampler rules -------------------------------------------------------------------------------
def assert_rules(task, seq, bos):
    """Check every BB rule on sequences seq int [B, L]."""
    seq = np.asarray(seq)
    is_trig = task.is_trigger[seq]
    start = 1 if bos else 0
    if bos:
        assert (seq[:, 0] == task.bos_id).all()
    assert not (seq[:, start:] == task.bos_id).any(), "BOS only at position 0"
    assert not (seq == task.delim_id).any(), "the delimiter is never generated"
    assert not is_trig[:, start].any(), "the first token is never a trigger"
    assert task.first_dist[seq[:, start]].min() > 0
    assert not (is_trig[:, :-1] & is_trig[:, 1:]).any(), "two adjacent triggers"
    b, t = np.nonzero(is_trig[:, :-1])
    assert (t >= 1).all() and (seq[b, t + 1] == seq[b, t - 1]).all(), "back-copy after a trigger"
    x, y = seq[:, start:-1], seq[:, start + 1:]
    free = ~task.is_trigger[x]
    assert (task.bigram[x[free], y[free]] > 0).all(), "non-trigger transition with P = 0"


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.sampled_from([3, 5]), bos=st.booleans(),
       shape=st.sampled_from([(16, 40), (3, 1), (1, 7)]))
def test_sample_obeys_rules(seed, k, bos, shape):
    task = BBTask(n_triggers=k, bos=bos)
    batch, seq_len = shape
    seq = task.sample(jax.random.key(seed), batch, seq_len)
    assert seq.shape == (batch, seq_len + 1) and seq.dtype == np.int32
    assert_rules(task, seq, bos)


def test_rules_on_default_size_batch(task3, big_sample):
    assert big_sample.shape == (2048, 257)
    assert_rules(task3, big_sample, bos=True)


def test_sample_is_deterministic_jittable_and_vmappable(task3):
    k0, k1 = jax.random.key(0), jax.random.key(1)
    a = np.asarray(task3.sample(k0, 8, 32))
    np.testing.assert_array_equal(a, task3.sample(k0, 8, 32))
    assert (a != np.asarray(task3.sample(k1, 8, 32))).any()
    np.testing.assert_array_equal(a, jax.jit(lambda k: task3.sample(k, 8, 32))(k0))
    keys = jax.random.split(k0, 3)
    v = np.asarray(jax.vmap(lambda k: task3.sample(k, 8, 32))(keys))
    assert v.shape == (3, 8, 33)
    for i in range(3):
        np.testing.assert_array_equal(v[i], task3.sample(keys[i], 8, 32))
    assert (v[0] != v[1]).any()
    raw = jax.random.PRNGKey(0)  # legacy uint32 keys work too
    assert_rules(task3, task3.sample(raw, 4, 16), bos=True)


# ---- statistics -----------------------------------------------------------------------------------
def chi2_z(observed, probs, min_expected=5.0):
    """Pooled chi-square test of count rows against probability rows.

    observed, probs: [R, V]. Per row, cells with expected count < min_expected are pooled (and the
    pool merged into the smallest kept cell if it is itself too small); statistics and degrees of
    freedom are summed over rows. Returns the Wilson-Hilferty z-score (~N(0, 1) under the null).
    """
    stat, dof = 0.0, 0
    for o, p in zip(np.asarray(observed, float), np.asarray(probs, float)):
        n = o.sum()
        if n == 0:
            continue
        e = n * p
        keep = e >= min_expected
        if keep.sum() < 1:
            continue
        oc, ec = list(o[keep]), list(e[keep])
        o_rest, e_rest = o[~keep].sum(), e[~keep].sum()
        if e_rest >= min_expected:
            oc.append(o_rest), ec.append(e_rest)
        elif e_rest > 0 or o_rest > 0:
            j = int(np.argmin(ec))
            oc[j] += o_rest
            ec[j] += e_rest
        if len(oc) < 2:
            continue
        oc, ec = np.array(oc), np.array(ec)
        stat += float(((oc - ec) ** 2 / ec).sum())
        dof += len(oc) - 1
    # Wilson-Hilferty: (X/d)^(1/3) is close to normal with mean 1 - 2/(9d) and variance 2/(9d).
    return ((stat / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))


def transition_counts(task, seq):
    """counts int [V, V] of (x, next) over non-trigger, non-BOS inputs x."""
    x, y = seq[:, :-1].ravel(), seq[:, 1:].ravel()
    free = ~task.is_trigger[x] & (x != task.bos_id)
    V = task.vocab_size
    return np.bincount(x[free] * V + y[free], minlength=V * V).reshape(V, V)


def test_transition_frequencies_match_bigram(task3, big_sample):
    counts = transition_counts(task3, big_sample)
    rows = np.flatnonzero(counts.sum(1))
    z = chi2_z(counts[rows], task3.bigram[rows])
    assert z < 5.0, f"transitions deviate from P: z = {z:.2f}"
    # The test has power: a 3% mixture with the unigram is clearly rejected on the same counts.
    wrong = 0.97 * task3.bigram + 0.03 * task3.unigram[None, :]
    assert chi2_z(counts[rows], wrong[rows]) > 10


def test_first_token_distribution(task3):
    for bos in (True, False):
        task = BBTask(n_triggers=3, bos=bos)
        seq = np.asarray(task.sample(jax.random.key(7), 20_000, 1))
        first = seq[:, 1 if bos else 0]
        counts = np.bincount(first, minlength=task.vocab_size)
        assert chi2_z(counts[None], task.first_dist[None]) < 5.0


def exact_expectations(task, seq_len):
    """Exact expected trigger fraction and non-trigger oracle NLL over the seq_len input positions of a
    BOS sequence, by propagating the law of (current token, token before a trigger)."""
    P, trig = task.bigram, task.is_trigger
    ent = -(P * np.log(np.where(P > 0, P, 1))).sum(1)  # entropy of each bigram row
    p_trig = P[:, trig].sum(1)
    a = task.first_dist.copy()  # P(x_t = x, x non-trigger), t = 1
    b = np.zeros(task.vocab_size)  # P(x_t is a trigger and x_{t-1} = x)
    n_trig = 0.0
    nll_sum = -(task.first_dist[task.first_dist > 0] * np.log(task.first_dist[task.first_dist > 0])).sum()
    n_free = 1.0  # position 0 (BOS)
    for _ in range(1, seq_len):
        n_trig += b.sum()
        n_free += a.sum()
        nll_sum += a @ ent
        a, b = a @ np.where(trig[None, :], 0, P) + b, a * p_trig
    return n_trig / seq_len, nll_sum / n_free


def test_trigger_fraction_and_oracle_risk(task3, big_sample):
    inputs, targets = big_sample[:, :-1], big_sample[:, 1:]
    trig = np.asarray(task3.trigger_mask(inputs))
    nll = np.asarray(task3.oracle_nll(inputs, targets))
    frac, risk = trig.mean(), nll[~trig].mean()
    exp_frac, exp_risk = exact_expectations(task3, 256)
    print(f"trigger fraction {frac:.4f} (exact {exp_frac:.4f}); oracle bigram risk {risk:.4f} (exact {exp_risk:.4f})")
    assert 0.23 < exp_frac < 0.28
    assert abs(frac - exp_frac) < 0.005  # sd over 2048 sequences ~0.0005
    assert abs(risk - exp_risk) < 0.02  # sd ~0.003
    assert abs(risk - 2.219) < 0.05  # reference oracle bigram risk (SPEC §1)
    # The default single eval batch (512 x 256) is also close to the reference.
    b = big_sample[:512]
    m = ~np.asarray(task3.trigger_mask(b[:, :-1]))
    assert abs(np.asarray(task3.oracle_nll(b[:, :-1], b[:, 1:]))[m].mean() - 2.219) < 0.05


# ---- oracle ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("bos", [True, False])
def test_oracle_nll_and_probs(bos):
    task = BBTask(n_triggers=5, bos=bos)
    seq = np.asarray(task.sample(jax.random.key(3), 64, 48))
    x, y = seq[:, :-1], seq[:, 1:]
    trig = np.asarray(task.trigger_mask(x))
    np.testing.assert_array_equal(trig, task.is_trigger[x])
    nll = np.asarray(task.oracle_nll(x, y))
    assert nll.dtype == np.float32 and nll.shape == x.shape
    assert (nll[trig] == 0).all()
    rows = np.where((x == task.bos_id)[..., None], task.first_dist, task.bigram[x])
    with np.errstate(divide="ignore"):  # trigger positions may have P[x, y] = 0; they are excluded
        ref = -np.log(np.take_along_axis(rows, y[..., None], -1)[..., 0])
    np.testing.assert_allclose(nll[~trig], ref[~trig], rtol=1e-5, atol=1e-6)

    probs = np.asarray(task.oracle_probs(x))
    assert probs.shape == (64, 48, 67) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    p_target = np.take_along_axis(probs, y[..., None], -1)[..., 0]
    assert (p_target[trig] == 1).all()  # one-hot on the back-copied token
    np.testing.assert_allclose(-np.log(p_target[~trig]), nll[~trig], rtol=1e-5, atol=1e-5)
    if bos:
        np.testing.assert_allclose(probs[:, 0], np.broadcast_to(task.first_dist, (64, 67)), atol=1e-7)


def test_oracle_under_jit(task3):
    seq = task3.sample(jax.random.key(5), 4, 16)
    x, y = seq[:, :-1], seq[:, 1:]
    np.testing.assert_array_equal(jax.jit(task3.oracle_nll)(x, y), task3.oracle_nll(x, y))
    np.testing.assert_array_equal(jax.jit(task3.oracle_probs)(x), task3.oracle_probs(x))


# ---- custom tables and errors -----------------------------------------------------------------------
def test_build_bigram_cli_roundtrip(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("abacabad\nbaca cab dab ac\n" * 20, encoding="utf-8")
    out = tmp_path / "tab.npz"
    assert build_main([str(text), "-o", str(out)]) == 0
    assert "6 distinct characters" in capsys.readouterr().out
    tab = load_bigram_table(out)
    assert tab.chars == "\n abcd"
    assert tab.counts[2, 3] == np.sum([("abacabad\nbaca cab dab ac\n" * 20)[i:i + 2] == "ab" for i in range(519)])
    task = BBTask(n_triggers=1, table=str(out))
    assert (task.vocab_size, task.bos_id, task.chars[task.triggers[0]]) == (8, 6, "a")
    assert_rules(task, task.sample(jax.random.key(0), 8, 30), bos=True)


def test_build_table_rejects_single_character():
    with pytest.raises(ConfigError, match="2 distinct"):
        build_table("aaaa")
    assert len(build_table("ab").chars) == 2


def test_build_bigram_cli_bad_file_exits_2(tmp_path):
    bad = tmp_path / "one.txt"
    bad.write_text("zzzzzz", encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "toybb.task.build_bigram", str(bad), "-o", str(tmp_path / "o.npz")],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "distinct" in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "o.npz").exists()


def test_build_bigram_main_errors(tmp_path, capsys):
    assert build_main([str(tmp_path / "missing.txt"), "-o", str(tmp_path / "o.npz")]) == 2
    assert "does not exist" in capsys.readouterr().err
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"caf\xe9 \xe9t\xe9")
    assert build_main([str(latin), "-o", str(tmp_path / "o.npz")]) == 2
    assert "UTF-8" in capsys.readouterr().err


@pytest.mark.parametrize("k", [0, -1, 65, 100, True, "3", 2.0])
def test_bad_n_triggers(k):
    with pytest.raises(ConfigError, match="n_triggers"):
        BBTask(n_triggers=k)


def test_bad_tables(tmp_path):
    with pytest.raises(ConfigError, match="neither a packaged table"):
        BBTask(table=str(tmp_path / "nope.npz"))
    with pytest.raises(ConfigError, match="neither a packaged table"):
        BBTask(table="shakespeare")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(ConfigError, match="not a valid bigram table"):
        BBTask(table=str(garbage))
    wrong_keys = tmp_path / "keys.npz"
    np.savez(wrong_keys, foo=np.zeros(3))
    with pytest.raises(ConfigError, match="missing"):
        load_bigram_table(wrong_keys)
    tab = build_table("hello world")
    shape = tmp_path / "shape.npz"
    np.savez(shape, chars=np.array([ord(c) for c in tab.chars], np.uint32), counts=tab.counts[:-1],
             unigram=tab.unigram)
    with pytest.raises(ConfigError, match="expected integer counts"):
        load_bigram_table(shape)
    neg = tmp_path / "neg.npz"
    np.savez(neg, chars=np.array([ord(c) for c in tab.chars], np.uint32), counts=-tab.counts, unigram=tab.unigram)
    with pytest.raises(ConfigError, match=">= 0"):
        load_bigram_table(neg)
    ok = save_table(tab, tmp_path / "ok")  # suffix added
    assert ok.name == "ok.npz" and load_bigram_table(ok).chars == tab.chars
    with pytest.raises(ConfigError, match="between 1 and 7"):
        BBTask(n_triggers=8, table=str(ok))  # "hello world" has 8 distinct characters


@pytest.mark.parametrize("batch,seq_len", [(4, 0), (0, 4), (4, -1), (4, 2.5)])
def test_bad_sample_sizes(task3, batch, seq_len):
    with pytest.raises(ConfigError, match="batch|seq_len"):
        task3.sample(jax.random.key(0), batch, seq_len)


def test_oracle_shape_mismatch(task3):
    with pytest.raises(ConfigError, match="same shape"):
        task3.oracle_nll(np.zeros((2, 3), np.int32), np.zeros((2, 4), np.int32))
