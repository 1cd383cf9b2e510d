"""Toy sandbox for long context: small character-level LMs (Tiny Shakespeare) trained at context C
with different position schemes, evaluated at longer lengths directly and with extension methods:
SelfExtend and position interpolation (RoPE/ALiBi), positional-vector replacement (NoPE), attention
window extension with a logit temperature (window attention). A minimal jitted loop (the Trainer is
built around the Bigram-Backcopy task and its probes)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from toybb.config import ModelConfig
from toybb.errors import ConfigError, ToybbError, TrainingDiverged
from toybb.models.capture import Capture
from toybb.models import forward as F
from toybb.models.sites import residual_add
from toybb.models.transformer import Transformer
from toybb.longctx.options import with_options
from toybb.longctx.posvec import positional_vectors


def char_data(text: str, val_frac: float = 0.1) -> tuple[np.ndarray, np.ndarray, str]:
    """(train ids [n1], validation ids [n2], vocabulary) of a character-level split (last val_frac)."""
    vocab = "".join(sorted(set(text)))
    table = {c: i for i, c in enumerate(vocab)}
    ids = np.fromiter((table[c] for c in text), np.int32, len(text))
    cut = int(len(ids) * (1 - val_frac))
    return ids[:cut], ids[cut:], vocab


def train_char_lm(cfg: ModelConfig, train: np.ndarray, *, seq: int, steps: int, batch: int = 32,
                  lr: float = 3e-3, seed: int = 0, log=None, what: str | None = None
                  ) -> tuple[Transformer, list[float]]:
    """Adam with cosine decay on random windows of `seq + 1` characters; returns (model, losses every 100).
    A NaN/inf loss raises TrainingDiverged naming the step (and `what`, the model's name)."""
    if steps < 1 or seq < 2:
        raise ConfigError(f"toy training needs steps >= 1 and seq >= 2, got {steps}, {seq}")
    model = Transformer(cfg, rngs=nnx.Rngs(seed))
    opt = nnx.Optimizer(model, optax.adam(optax.cosine_decay_schedule(lr, steps, 0.1)), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, x):
        def loss_fn(m):
            return F.token_nll(m(x[:, :-1]), x[:, 1:]).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss

    rng = np.random.default_rng(seed)
    losses, pending = [], []  # pending: this stretch's losses, checked for NaN every 100 steps
    for s in range(steps):
        start = rng.integers(0, len(train) - seq - 1, batch)
        x = jnp.asarray(train[start[:, None] + np.arange(seq + 1)])
        pending.append(step(model, opt, x))
        if s % 100 == 0 or s == steps - 1:
            stretch = np.asarray(jnp.stack(pending))
            if not np.isfinite(stretch).all():
                raise TrainingDiverged(s + 1 - len(stretch) + int(np.argmin(np.isfinite(stretch))), [], None, None,
                                       what=what)
            pending = []
            losses.append(float(stretch[-1]))
            if log:
                log(f"  step {s}: loss {losses[-1]:.3f}")
    return model, losses


with_model_options = with_options  # former name


def eval_windows(val: np.ndarray, length: int, n: int) -> np.ndarray:
    """n evenly spaced windows of length + 1 characters of the validation text -> [n, length + 1]."""
    if len(val) < length + 2:
        raise ToybbError(f"validation text ({len(val)} characters) is shorter than the length {length}")
    starts = np.linspace(0, len(val) - length - 2, n).astype(int)
    return val[starts[:, None] + np.arange(length + 1)]


def mean_nll(model: Transformer, windows: np.ndarray, resid_add: dict | None = None) -> float:
    """Mean next-character NLL (nats) over all positions of windows [n, T + 1]."""
    windows = jnp.asarray(windows)
    edits = residual_add(model.sites(), resid_add or {}, (windows.shape[0], windows.shape[1] - 1))
    nll = F.loss(model, windows[:, :-1], windows[:, 1:], edits=edits, reduction="token").nll
    return float(np.mean(np.asarray(nll)))


_RESID = Capture(("blocks.*.resid_post",))


def toy_positional_vectors(model: Transformer, windows: np.ndarray, batch: int = 64) -> np.ndarray:
    """Positional vectors p [layers, T, d] (streaming mean over the windows [N, T])."""
    def hidden(x):  # [layers, n, T, d]
        c = F.captures(model, x, _RESID)
        return np.stack([np.asarray(c[f"blocks.{l}.resid_post"]) for l in range(model.cfg.n_layers)])

    p, _ = positional_vectors(hidden, (windows[i : i + batch] for i in range(0, len(windows), batch)))
    return p


def replacement_delta(p_train: np.ndarray, p_long: np.ndarray, ratio: float, alpha: float, keep: int = 4) -> np.ndarray:
    """Positional-vector replacement at one layer: the residual change [T, d] that swaps the positional
    vector of every position t >= keep (p_long [T, d], measured at the long length) for alpha times the
    training-length vectors p_train [C, d] interpolated at t / ratio; the first `keep` tokens keep theirs."""
    T, C = p_long.shape[0], p_train.shape[0]
    src = np.clip(np.arange(T) / ratio, 0, C - 1)
    interp = np.stack([np.interp(src, np.arange(C), p_train[:, j]) for j in range(p_train.shape[1])], axis=1)
    u = p_train.mean(0)
    new = u + alpha * (interp - u)  # scale the position-dependent part m, keep the common u
    delta = new - p_long
    delta[:keep] = 0.0
    return delta.astype(np.float32)
