"""One tiny 2-layer config and one cache of compiled Trainers shared by the sweep, series and figures
tests (same pytest process), so the tiny model is compiled once."""

from toybb.config import ModelConfig, OptimConfig, RunConfig, TaskConfig, TrainConfig

TINY = RunConfig(model=ModelConfig(d_model=16, max_len=8, n_layers=2), task=TaskConfig(seq_len=8),
                 optim=OptimConfig(lr=3e-3),
                 train=TrainConfig(steps=10, batch=8, seeds=(0, 1), eval_batch=8, eval_schedule=((5, 0),), ckpt_every=5))
# the same config as a sweep file's base (cpu preset + these sections)
TINY_BASE = {"preset": "cpu", "model": {"d_model": 16, "max_len": 8, "n_layers": 2}, "task": {"seq_len": 8},
             "train": {"steps": 20, "batch": 8, "eval_batch": 8, "eval_schedule": [[5, 0]], "ckpt_every": 5}}
TRAINERS: dict = {}  # toybb.train.trainer.trainer_key(cfg) -> Trainer


def trainer(cfg):
    from toybb.train.trainer import Trainer, trainer_key

    key = trainer_key(cfg)
    if key not in TRAINERS:
        TRAINERS[key] = Trainer(cfg)
    return TRAINERS[key]
