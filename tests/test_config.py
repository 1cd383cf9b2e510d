"""Config validation: each bad value is a ConfigError naming the field."""

import json

import pytest

from toybb.config import ModelConfig, OptimConfig, RunConfig, TaskConfig, TrainConfig, cpu_preset, load_config_file
from toybb.errors import ConfigError


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: ModelConfig(attention="linear"), "model.attention"),
        (lambda: ModelConfig(d_model=30, n_heads=4), "divisible"),
        (lambda: ModelConfig(n_heads=4, n_kv_heads=3, d_model=32), "n_kv_heads"),
        (lambda: ModelConfig(n_layers=2, no_mlp=(2,)), "out of range"),
        (lambda: OptimConfig(name="rmsprop"), "optim.name"),
        (lambda: OptimConfig(lr=0.0), "optim.lr"),
        (lambda: OptimConfig(lr=-1e-3), "optim.lr"),
        (lambda: TrainConfig(steps=0), "train.steps"),
        (lambda: TrainConfig(steps=-5), "train.steps"),
        (lambda: TrainConfig(lrs=(1e-3, 0.0)), "train.lrs"),
        (lambda: RunConfig(task=TaskConfig(seq_len=300)), "position table"),
        (lambda: RunConfig(task=TaskConfig(n_triggers=67)), "n_triggers"),
        (lambda: RunConfig.from_dict({"model": {"d_modle": 3}}), "d_modle"),
        (lambda: RunConfig.from_dict({"modell": {}}), "modell"),
        (lambda: RunConfig.from_dict({"train": {"steps": "many"}}), "train.steps"),
    ],
)
def test_bad_configs(build, match):
    with pytest.raises(ConfigError, match=match):
        build()


def test_eval_grid_reference_and_short():
    g = TrainConfig(steps=10_400).eval_steps()
    assert g[:3] == [0, 20, 40] and 10_000 in g and g[-2:] == [10_200, 10_400]
    assert len(g) == 1 + 500 + 2
    assert TrainConfig(steps=50, eval_schedule=((20, 0),)).eval_steps() == [0, 20, 40, 50]


def test_roundtrip_and_files(tmp_path):
    cfg = cpu_preset()
    again = RunConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg
    p = tmp_path / "c.yaml"
    p.write_text("model: {d_model: 32\n")
    with pytest.raises(ConfigError, match="malformed"):
        load_config_file(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file(tmp_path / "missing.yaml")
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config_file(p)


def test_replace_keeps_validation():
    cfg = cpu_preset().replace(model={"n_layers": 3}, optim={"name": "sgd", "lr": None})
    assert cfg.model.n_layers == 3 and cfg.optim.learning_rate == 0.03
    with pytest.raises(ConfigError):
        cfg.replace(model={"attention": "bogus"})
