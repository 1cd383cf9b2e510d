"""Training dynamics (issue 2 acceptance): the attention sink, the value-state drain, active/dormant
tokens, ReLU attention without a sink, and Adam vs SGD residual peaks.

The default suite runs a small fast version; `-m slow` runs the CPU default itself (minutes)."""

import numpy as np
import pytest

from toybb.config import ModelConfig, OptimConfig, RunConfig, TaskConfig, TrainConfig, cpu_preset
from toybb.train.final import final_probes
from toybb.train.loop import train
from toybb.train.trainer import Trainer


def _check_sink_formed(result, trainer, min_final=0.6, exact_dormancy=True):
    m = result.metrics
    init, final = m["sink_attention_l0"][0], m["sink_attention_l0"][-1]
    assert (final > min_final).all() and (final >= 3 * init).all(), (init, final)
    assert (m["backcopy_risk"][-1] < 0.05).all(), m["backcopy_risk"][-1]
    # the drain: the sink's value state is far smaller than the other tokens'
    assert (m["value_drain_l0"][-1] < 0.5 * m["value_others_l0"][-1]).all(), (m["value_drain_l0"][-1], m["value_others_l0"][-1])
    ad, iv = final_probes(result, trainer)
    triggers = {int(t) for t in trainer.task.triggers}
    exact = 0
    for seed, _ in result.runs:
        rows = [r for r in ad if r["seed"] == seed]
        active = {r["token"] for r in rows if not r["dormant"]}
        if exact_dormancy:
            # the triggers are active; any other active token is a rare character (< 0.5% of the text).
            # At the CPU default seed 1 keeps 'z' (0.03% of the text) active through 10k steps, in the
            # probe whatever the order of its body and on 141 natural occurrences (attention on BOS 0.0 at
            # 5k and 10k): the head treats it like a trigger and nothing pushes it back. 'Q' is active at
            # 5k (0.53 on 35 natural occurrences) and dormant by 10k. A smaller lr is worse (2e-3: 2 of
            # 8 seeds exact at 5k, extras '&', 'Q', 'X', 'q', 'z'), a larger one moves it (8e-3: seed 3 '&').
            assert triggers <= active, (seed, sorted(active))
            assert all(trainer.task.unigram[v] < 0.005 for v in active - triggers), (seed, sorted(active - triggers))
            exact += active == triggers
        else:  # a partly formed sink: triggers active (on the previous token), non-triggers far more on BOS
            assert triggers <= active
            trig = max(r["bos_attention"] for r in rows if r["is_trigger"])
            assert trig < 0.05
            assert np.mean([r["bos_attention"] for r in rows if not r["is_trigger"]]) > 0.2 + trig
    if exact_dormancy:  # and most seeds classify exactly the triggers as active
        assert exact > len(result.runs) / 2, exact
    by = {(r["seed"], r["intervention"]): r for r in iv}
    for seed, _ in result.runs:
        # attention does the back-copy, the MLP the bigram (SPEC §3 interventions)
        assert by[(seed, "no_attention")]["backcopy_risk"] > 1.0 > by[(seed, "full")]["backcopy_risk"]
        assert by[(seed, "no_mlp")]["bigram_risk"] > by[(seed, "full")]["bigram_risk"] + 0.3


SMALL = RunConfig(
    model=ModelConfig(d_model=32, max_len=64),
    task=TaskConfig(seq_len=32),
    optim=OptimConfig(lr=3e-3),
    train=TrainConfig(steps=1500, batch=32, seeds=(0, 1), eval_batch=64, eval_schedule=((100, 0),)),
)


@pytest.mark.slow  # the default suite's version: tests/test_phenomena.py
def test_sink_and_drain_form_small():
    trainer = Trainer(SMALL)
    result = train(SMALL, None, progress=False, trainer=trainer)
    _check_sink_formed(result, trainer, min_final=0.5, exact_dormancy=False)


@pytest.mark.slow
def test_cpu_default_acceptance():
    cfg = cpu_preset()
    trainer = Trainer(cfg)
    result = train(cfg, None, progress=False, trainer=trainer)
    _check_sink_formed(result, trainer)


@pytest.mark.slow
def test_relu_attention_has_no_sink_or_drain():
    soft = cpu_preset()
    relu = soft.replace(model={"attention": "relu"})
    rs, rr = (train(c, None, progress=False) for c in (soft, relu))
    # no drain: the BOS value state grows instead of shrinking, and relative to the other tokens it
    # stays many times larger than under softmax. (At this scale it stays below the others' mean: with
    # lr 3e-3 the ratio dips to 0.44-0.46 at 500 steps, climbs to 0.80/0.62 at 5k, max 0.85/0.92,
    # the same for the mean over token types; softmax: 0.04.)
    v = rr.metrics["value_drain_l0"]
    assert (v[-1] > 3 * v[0]).all()
    ratio = lambda r: r.metrics["value_drain_l0"][-1] / r.metrics["value_others_l0"][-1]
    assert (ratio(rr) > 5 * ratio(rs).max()).all()
    # Attn<s> without query 0 stays far below the softmax model's
    assert np.median(rr.metrics["sink_attention_excl0_l0"][-1]) < 0.3 * np.median(rs.metrics["sink_attention_excl0_l0"][-1])


@pytest.mark.slow
def test_sgd_residual_peak_much_smaller_than_adam_3_layers():
    # the setting of the closing note: Adam lr 1e-3 vs SGD lr 0.03 (SPEC), 1,500 steps, 2 seeds
    base = cpu_preset().replace(model={"n_layers": 3}, optim={"lr": 1e-3}, train={"seeds": (0, 1), "steps": 1500})
    adam = train(base, None, progress=False)
    sgd = train(base.replace(optim={"name": "sgd", "lr": None}), None, progress=False)
    growth = lambda r: r.metrics["residual_peak_l0"][-1] - r.metrics["residual_peak_l0"][0]
    assert np.median(growth(adam)) > 2 * np.median(growth(sgd))
    # under Adam the BOS residual after layer 0 stands out from the other positions (a peak)
    assert (adam.metrics["residual_excess_l0"][-1] > 5).all()
