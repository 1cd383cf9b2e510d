"""Optimisers of SPEC §2 as optax transformations whose learning rate lives in the state, so
runs with different learning rates share one compiled program under `jax.vmap`."""

from __future__ import annotations

import optax

from toybb.config import OptimConfig


def make_optimizer(cfg: OptimConfig, lr: float | None = None) -> optax.GradientTransformation:
    """AdamW (PyTorch semantics: decoupled decay lr*wd*p) or SGD with momentum and L2 weight decay
    added to the gradient before momentum (PyTorch SGD semantics)."""
    lr = cfg.learning_rate if lr is None else lr
    if cfg.name == "adam":
        return optax.inject_hyperparams(optax.adamw)(
            learning_rate=lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay
        )
    return optax.inject_hyperparams(
        lambda learning_rate: optax.chain(
            optax.add_decayed_weights(cfg.weight_decay),
            optax.sgd(learning_rate, momentum=cfg.momentum),
        )
    )(learning_rate=lr)
