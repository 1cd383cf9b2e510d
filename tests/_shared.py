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


def cache_env(cache_dir) -> dict[str, str]:
    """Environment of a subprocess that shares the persistent XLA compilation cache in `cache_dir`
    (a toybb subprocess then compiles each program once for the whole test)."""
    return {"JAX_COMPILATION_CACHE_DIR": str(cache_dir), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def persistent_compile_cache(cache_dir):
    """Context manager: this process reads and writes compiled programs in `cache_dir` (the same HLO
    built by another Trainer object, or by a subprocess, is then not compiled again)."""
    import contextlib

    import jax
    from jax._src import compilation_cache

    @contextlib.contextmanager
    def cm():
        names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
                 "jax_persistent_cache_min_entry_size_bytes")
        old = [getattr(jax.config, n) for n in names]
        for n, v in zip(names, (str(cache_dir), 0, 0)):
            jax.config.update(n, v)
        compilation_cache.reset_cache()
        try:
            yield
        finally:
            for n, v in zip(names, old):
                jax.config.update(n, v)
            compilation_cache.reset_cache()

    return cm()
