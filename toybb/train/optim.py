"""Optimisers of SPEC §2 as optax transformations whose learning rate lives in the state, so
runs with different learning rates share one compiled program under `jax.vmap`."""

from __future__ import annotations

import re

import jax
import optax
from optax.contrib import MuonDimensionNumbers, muon

from toybb.config import DEFAULT_LR, OptimConfig

# the matrices Muon orthogonalises (path suffix -> (reduction axes, output axes) of toybb's per-head layout);
# every other parameter (embeddings, unembedding, norms, biases, learned sinks) takes Adam's step
MUON_MATRICES = {
    r"attn\.w[qkv]": ((0,), (1, 2)),  # [d_model, heads, head_dim]
    r"attn\.wo": ((0, 1), (2,)),  # [heads, head_dim, d_model]
    r"attn\.w_gate": ((0,), (1,)),  # [d_model, heads] or [d_model, heads, head_dim] (output: heads; features batched)
    r"mlp\.w_(in|out|gate)": ((0,), (1,)),
}


def muon_dimensions(params):
    """Muon's dimension numbers for each parameter of a toybb model (None: Adam)."""
    def dims(path, x):
        name = re.sub(r"[\[\]'\.]+", ".", jax.tree_util.keystr(path)).strip(".")
        for pattern, (red, out) in MUON_MATRICES.items():
            if re.search(pattern + r"(\.value)?$", name):
                return MuonDimensionNumbers(red, out)
        return None
    return jax.tree_util.tree_map_with_path(dims, params)


def make_optimizer(cfg: OptimConfig, lr: float | None = None) -> optax.GradientTransformation:
    """AdamW (PyTorch semantics: decoupled decay lr*wd*p), SGD with momentum and L2 weight decay added to
    the gradient before momentum (PyTorch SGD semantics), or Muon (optax.contrib.muon: Nesterov momentum
    orthogonalised by Newton-Schulz for the matrices of `MUON_MATRICES`, optax's Adam with Nesterov momentum
    and decoupled decay for the rest, at the learning rate scaled by the ratio of the defaults, 3e-4 / 0.02)."""
    lr = cfg.learning_rate if lr is None else lr
    if cfg.name == "adam":
        return optax.inject_hyperparams(optax.adamw)(
            learning_rate=lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay
        )
    if cfg.name == "muon":
        adam_share = DEFAULT_LR["adam"] / DEFAULT_LR["muon"]
        return optax.inject_hyperparams(
            lambda learning_rate: muon(
                learning_rate, weight_decay=cfg.weight_decay, adam_b1=cfg.b1, adam_b2=cfg.b2,
                adam_weight_decay=cfg.weight_decay, adam_learning_rate=learning_rate * adam_share,
                muon_weight_dimension_numbers=muon_dimensions)
        )(learning_rate=lr)
    return optax.inject_hyperparams(
        lambda learning_rate: optax.chain(
            optax.add_decayed_weights(cfg.weight_decay),
            optax.sgd(learning_rate, momentum=cfg.momentum),
        )
    )(learning_rate=lr)
