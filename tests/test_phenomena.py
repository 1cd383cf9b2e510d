"""The extreme-token phenomena guarded in the default suite, each on a small configuration that trains
in seconds (issue: reproduce the paper). The assertions are as strict as the phenomenon is at that
size; the CPU-scale and paper-scale versions are in the gallery (figures/README.md) and `-m slow`.

Sizes: 1 layer d 32, sequence 64 (the active/dormant probe [BOS] + all 62 non-triggers + [v] fits),
batch 32, Adam lr 1e-2, 600 steps (every guard holds from step 600 on); 3 layers d 64, sequence 32, batch 16,
800 steps (the attention bias's needs them); 2 seeds each; evaluated at the first and the last step only (the
guards read nothing between, and each evaluation costs a pass over the eval batch)."""

import pytest

from toybb.config import ModelConfig, OptimConfig, RunConfig, TaskConfig, TrainConfig
from toybb.train.final import final_probes
from toybb.train.loop import train
from toybb.train.trainer import Trainer

ONE = RunConfig(model=ModelConfig(d_model=32, max_len=64), task=TaskConfig(seq_len=64), optim=OptimConfig(lr=1e-2),
                train=TrainConfig(steps=600, batch=32, seeds=(0, 1), eval_batch=64, eval_schedule=((600, 0),)))
THREE = RunConfig(model=ModelConfig(d_model=64, max_len=32, n_layers=3), task=TaskConfig(seq_len=32),
                  optim=OptimConfig(lr=2e-3),
                  train=TrainConfig(steps=800, batch=16, seeds=(0, 1), eval_batch=64, eval_schedule=((800, 0),)))
RUNS: dict = {}


def run(name: str):
    """(result, trainer) of one named variant, trained once per test session."""
    if name not in RUNS:
        cfg = {"softmax": ONE, "relu": ONE.replace(model={"attention": "relu"}),
               "sink_token": ONE.replace(model={"sink_token": True}),
               "no_bos": ONE.replace(task={"bos": False}),
               "sigmoid": ONE.replace(model={"attention": "sigmoid", "sigmoid_bias": -4.159}),  # -log 64
               "head_gate": ONE.replace(model={"attn_gate": "head"}),
               "adam3": THREE, "sgd3": THREE.replace(optim={"name": "sgd", "lr": 0.03}),
               "relu3": THREE.replace(model={"attention": "relu"}),
               "bias3": THREE.replace(model={"attn_bias": True})}[name]
        trainer = Trainer(cfg)
        RUNS[name] = (train(cfg, None, progress=False, trainer=trainer), trainer)
    return RUNS[name]


def first_last(result, name):
    m = result.metrics[name]
    return m[0], m[-1]


def test_one_layer_sink_drain_and_exactly_the_triggers_active():
    result, trainer = run("softmax")
    m = result.metrics
    assert (m["sink_attention_excl0_l0"][-1] > 0.85).all(), m["sink_attention_excl0_l0"][-1]  # from ~0.06
    assert (m["backcopy_risk"][-1] < 0.1).all()
    # the drain: the BOS value (||W_O v<s>||) far below the other tokens', and smaller than at step 0
    v0, v = first_last(result, "value_drain_l0")
    assert (v < 0.2 * m["value_others_l0"][-1]).all() and (v < v0).all(), (v, m["value_others_l0"][-1])
    ad, _ = final_probes(result, trainer)
    assert {r["probe"] for r in ad} == {"paper"} and {r["probe_len"] for r in ad} == {64}
    triggers = {int(t) for t in trainer.task.triggers}
    exact = 0
    for seed, _ in result.runs:
        active = {r["token"] for r in ad if r["seed"] == seed and not r["dormant"]}
        # every trigger active, at most two other characters (rare ones) not yet dormant
        assert triggers <= active and len(active - triggers) <= 2, (seed, sorted(active))
        exact += active == triggers
    assert exact >= 1


def test_relu_attention_no_sink_and_a_growing_bos_value():
    soft, _ = run("softmax")
    relu, _ = run("relu")
    # no sink: the queries after BOS put a small fraction of the softmax model's attention on it
    a_relu, a_soft = relu.metrics["sink_attention_excl0_l0"][-1], soft.metrics["sink_attention_excl0_l0"][-1]
    assert (a_relu < 0.2 * a_soft.min()).all(), (a_relu, a_soft)
    # no drain: the BOS value grows and stays of the order of the other tokens' (softmax: < 0.2 of them)
    v0, v = first_last(relu, "value_drain_l0")
    assert (v > 3 * v0).all() and (v > 0.5 * relu.metrics["value_others_l0"][-1]).all(), (v0, v)
    assert (relu.metrics["backcopy_risk"][-1] < 0.2).all()  # the task is still learned


def test_sigmoid_attention_and_an_output_gate_remove_or_weaken_the_sink():
    """Mitigations (toybb mitigations, figures/README.md): sigmoid attention without normalisation has no
    sink (Gu et al.); a head-wise output gate keeps a much weaker one; both still learn the back-copy."""
    soft, _ = run("softmax")
    a_soft = soft.metrics["sink_attention_excl0_l0"][-1]
    for name, frac in (("sigmoid", 0.1), ("head_gate", 0.5)):
        res, _ = run(name)
        a = res.metrics["sink_attention_excl0_l0"][-1]
        assert (a < frac * a_soft.min()).all(), (name, a, a_soft)
        assert (res.metrics["backcopy_risk"][-1] < 0.2).all(), name


def test_three_layers_adam_residual_peak_and_sgd_none():
    adam, _ = run("adam3")
    sgd, _ = run("sgd3")

    # Adam: the sink forms in layer 1 (not layer 0), and the BOS residual after layer 0 grows and
    # stands out from the other positions (SPEC §3: Adam 24 -> 141, SGD 24 -> 20 at 10k paper steps)
    assert (adam.metrics["sink_attention_excl0_l1"][-1] > 0.6).all()
    assert (adam.metrics["sink_attention_excl0_l0"][-1] < 0.4).all()
    grow = {n: first_last(r, "residual_peak_l0")[1] - first_last(r, "residual_peak_l0")[0]
            for n, r in (("adam", adam), ("sgd", sgd))}
    assert (grow["adam"] > 2 * grow["sgd"].max()).all(), grow
    assert (adam.metrics["residual_excess_l0"][-1] > 6).all(), adam.metrics["residual_excess_l0"][-1]
    assert (adam.metrics["residual_peak_l0"][-1] > 1.4 * adam.metrics["residual_others_l0"][-1]).all()


def test_attention_bias_takes_the_sink_and_shrinks_the_residual_peak():
    plain, _ = run("adam3")
    bias, _ = run("bias3")
    # the BOS residual peak after layer 0 shrinks in every seed
    assert (bias.metrics["residual_excess_l0"][-1] < 0.6 * plain.metrics["residual_excess_l0"][-1]).all()
    # in layer 1 the sink moves to k' in at least one seed at this size and lr (2e-3); in both at lr 4e-3
    # (README), in neither within 2,000 steps at the gallery's 1e-3; k' + BOS together are a sink in every seed
    k, b = bias.metrics["bias_attention_l1"][-1], bias.metrics["sink_attention_l1"][-1]
    assert ((k > 0.5) & (b < 0.1)).any(), (k, b)
    assert (k + b > 0.6).all(), (k, b)


def test_learned_sink_token_shares_the_sink_with_the_bos():
    tok, _ = run("sink_token")
    slot, bos = tok.metrics["slot_attention_l0"][-1], tok.metrics["sink_attention_l0"][-1]
    # a sink forms on the two together, and the learned slot takes a real share of it in every seed
    assert (slot + bos > 0.8).all(), (slot, bos)
    assert (slot > 0.1).all(), (slot, bos)


@pytest.mark.slow
def test_three_layer_relu_attention_forms_no_sink():
    relu, _ = run("relu3")
    # ReLU attention forms no sink in layer 1. Its BOS residual is not asserted: at this size one seed's
    # BOS query attends to itself with a growing ReLU weight, A_00 = ReLU(q_0 k_0 / sqrt(d)), and the BOS
    # residual after layer 0 grows with it (seed 1: 10 -> 49 at lr 7e-4, 378 at 2e-3; seed 0 stays at 12),
    # unlike the paper's lr 3e-4 run, which stays at ~24 (its layer-0 logit on BOS falls to -5).
    assert (relu.metrics["sink_attention_excl0_l1"][-1] < 0.1).all()
    assert (relu.metrics["backcopy_risk"][-1] < 0.2).all()
