"""Each result of theory/*.md as a function that simulates it and returns predicted vs simulated
numbers (used by the property tests, `toybb theory`, and benchmarks/bench_theory.py).

Every check returns a dict: name, doc (theory/ file), statement (one line), rows (list of
(quantity, predicted, simulated)), ok (bool), and curves (for figures).
"""

from __future__ import annotations

import numpy as np

import jax

from toybb.theory import models as M
from toybb.theory import rates as R
from toybb.theory.dynamics import Optimiser, log_grid, simulate


def _centred_norm(s):
    return np.linalg.norm(s - s.mean(-1, keepdims=True), axis=-1)


def sink_attention_gap(inst: M.AttentionInstance, k: np.ndarray, t: float) -> float:
    """Predicted non-sink attention max_v (1 - alpha_v) at flow time t in the asymptotic regime:
    w e^{-y_v} = w k_v / sqrt(t). Rates are within ~2x this of their limits (theory/03)."""
    return float(np.asarray(inst.w) * np.max(k) / np.sqrt(t))


def check_gradients(seed: int = 0, n_types: int = 4, n_contexts: int = 5) -> dict:
    """theory/01: closed-form gradients equal autodiff; the mean of s gets zero gradient."""
    rng = np.random.default_rng(seed)
    inst = M.random_instance(rng, n_types, n_contexts, w=float(rng.uniform(1, 6)), z_scale=1.5)
    params = {"y": rng.normal(0, 1.5, n_types), "s": rng.normal(0, 1.0, n_types)}
    with jax.enable_x64(True):
        ga = jax.grad(M.softmax_loss)(params, inst)
        gc = M.softmax_grads(params, inst)
        err = max(float(np.max(np.abs(np.asarray(ga[k]) - np.asarray(gc[k])))) for k in ("y", "s"))
        mean_grad = float(abs(np.sum(np.asarray(gc["s"]))))
    return {"name": "gradients", "doc": "theory/01_reduced_model.md",
            "statement": "closed-form gradients of the reduced model match autodiff; d/ds is orthogonal to 1",
            "rows": [("max |autodiff - closed form|", 0.0, err), ("|1 . dL/ds|", 0.0, mean_grad)],
            "ok": err < 1e-10 and mean_grad < 1e-12, "curves": None}


def check_shared_value(seed: int = 0, n_types: int = 4, steps: int = 100_000, lr: float = 1.0, batch: int = 4) -> dict:
    """theory/02 (a): one context (shared z): y converges to a finite common value y*, s cancels z
    (s - mean s = -e^{-y*} (z - mean z)), loss -> 0."""
    rng = np.random.default_rng(seed)
    insts = [M.random_instance(rng, n_types, 1, w=float(rng.uniform(1, 6)), z_scale=2.0) for _ in range(batch)]
    inst = M.stack(insts)
    p0 = {"y": rng.normal(0, 1, (batch, n_types)), "s": rng.normal(0, 0.5, (batch, n_types))}
    grid = log_grid(steps, 20)
    tr = simulate("softmax", inst, p0, lr, grid, "gd")
    y, s = tr.params["y"], tr.params["s"]
    half = np.searchsorted(grid, steps // 10)
    drift = float(np.max(np.abs(y[:, -1] - y[:, half])))
    spread = float(np.max(np.ptp(y[:, -1], axis=-1)))
    zc = inst.z[:, 0] - inst.z[:, 0].mean(-1, keepdims=True)
    sc = s[:, -1] - s[:, -1].mean(-1, keepdims=True)
    cancel = float(np.max(np.abs(sc + np.exp(-y[:, -1].mean(-1, keepdims=True)) * zc)))
    return {"name": "shared_value", "doc": "theory/02_finite_vs_divergent.md",
            "statement": "single shared non-BOS value: the sink logit converges (BOS value cancels z)",
            "rows": [("y drift over last decade", 0.0, drift), ("max y", "finite", float(y.max())),
                     ("spread of y_v at end", 0.0, spread), ("|s_hat + e^-y z_hat|", 0.0, cancel),
                     ("final loss", 0.0, float(tr.loss[:, -1].max()))],
            "ok": drift < 1e-3 and cancel < 1e-6 and spread < 1e-6,
            "curves": {"t": tr.time()[0], "y": y[0], "loss": tr.loss[0]}}


def simulate_randomised(inst: M.AttentionInstance, y0: np.ndarray, s0: np.ndarray, lr: float, steps: int,
                        method: str = "gd"):
    """One randomised instance (batch of 1) on a log grid; returns (trajectory, prediction)."""
    pred = R.predicted_softmax(inst)
    tr = simulate("softmax", M.stack([inst]), {"y": y0[None], "s": s0[None]}, lr, log_grid(steps, 40), method)
    return tr, pred


def fit_randomised(tr, pred) -> dict:
    """Fitted rates on the last decade of flow time: c_v (per active type), a, b and constants."""
    t = tr.time()[0]
    act = pred["active"]
    ys = tr.params["y"][0][:, act]
    c = np.array([R.fit_rates(t, ys[:, j])["log_slope"] for j in range(ys.shape[1])])
    drain = _centred_norm(tr.params["s"][0][:, pred["support"]])
    a = -R.fit_rates(t, drain)["power"]
    b = -R.fit_rates(t, tr.loss[0])["power"]
    T = t[-1]
    return {"c": c, "a": a, "b": b, "k_fit": np.exp(0.5 * np.log(T) - ys[-1]),
            "drain_const_fit": drain[-1] * np.sqrt(T), "loss_const_fit": tr.loss[0, -1] * T}


def check_rates(seed: int = 0, n_types: int = 4, n_contexts: int = 8, steps: int = 1_000_000, lr: float = 2.0,
                w: float = 2.0, z_scale: float = 1.5) -> dict:
    """theory/03: randomised contexts: y_v ~ 1/2 log t, ||s - mean s|| ~ t^-1/2, L ~ N / (4 t)."""
    rng = np.random.default_rng(seed)
    inst = M.random_instance(rng, n_types, n_contexts, w=w, z_scale=z_scale)
    tr, pred = simulate_randomised(inst, np.zeros(n_types), rng.normal(0, 0.5, n_types), lr, steps)
    fit = fit_randomised(tr, pred)
    t = tr.time()[0]
    curves = R.predicted_softmax_curves(inst, t[1:])
    rows = [("c (y_v ~ c log t), per type", 0.5, fit["c"].round(4).tolist()),
            ("a (||s - mean s|| ~ t^-a)", 0.5, round(fit["a"], 4)),
            ("b (loss ~ t^-b)", 1.0, round(fit["b"], 4)),
            ("loss * t at end (N/4)", pred["loss_const"], round(fit["loss_const_fit"], 4)),
            ("k_v = sqrt(t) e^{-y_v} at end", pred["k"].round(4).tolist(), fit["k_fit"].round(4).tolist()),
            ("drain const D", round(pred["drain_const"], 4), round(fit["drain_const_fit"], 4))]
    ok = (np.all(np.abs(fit["c"] / 0.5 - 1) < 0.1) and abs(fit["a"] / 0.5 - 1) < 0.1 and abs(fit["b"] - 1) < 0.1
          and abs(fit["loss_const_fit"] / pred["loss_const"] - 1) < 0.1)
    return {"name": "rates", "doc": "theory/03_rates.md",
            "statement": "randomised contexts, gradient flow: y ~ 0.5 log t, drain ~ t^-0.5, loss ~ N/(4t)",
            "rows": rows, "ok": bool(ok),
            "curves": {"t": t[1:], "y": tr.params["y"][0][1:, pred["active"]], "drain": _centred_norm(tr.params["s"][0][:, pred["support"]])[1:],
                       "loss": tr.loss[0, 1:], "pred": curves}}


def check_monotone(seed: int = 0, n_types: int = 4, n_contexts: int = 8, steps: int = 20_000, lr: float = 1.0,
                   batch: int = 4) -> dict:
    """theory/04: gradient descent with lr <= 1 (values of moderate size): loss non-increasing."""
    rng = np.random.default_rng(seed)
    inst = M.stack([M.random_instance(rng, n_types, n_contexts, w=float(rng.uniform(1, 8))) for _ in range(batch)])
    p0 = {"y": rng.normal(0, 1, (batch, n_types)), "s": rng.normal(0, 1, (batch, n_types))}
    tr = simulate("softmax", inst, p0, lr, np.arange(steps + 1), "gd")
    inc = float(np.max(np.diff(tr.loss, axis=1) / np.maximum(tr.loss[:, :-1], 1e-300)))
    return {"name": "monotone", "doc": "theory/04_descent.md",
            "statement": f"gradient descent, lr={lr}: the loss never increases",
            "rows": [("max relative loss increase per step", "<= 0", inc)], "ok": inc <= 1e-12, "curves": None}


def residual_sgd_prediction(theta0, m0, kappa, beta, t):
    """Predicted (theta, m) at flow times t for the residual model: theta from the 1-d ODE
    theta' = kappa phi e^{-2 theta phi}, phi = phi(m(theta)), by quadrature of dt/dtheta; m from the
    invariant. Exact under gradient flow (theory/05)."""
    inv = R.residual_invariant(theta0, m0, beta)
    th = np.linspace(theta0, theta0 + 40.0, 400_001)
    mm = R.residual_m_from_theta(th, inv, beta)
    ph = mm / np.sqrt(mm**2 + beta**2)
    f = np.exp(np.minimum(2 * th * ph, 700)) / (kappa * ph)
    tt = np.concatenate([[0], np.cumsum(0.5 * (f[1:] + f[:-1]) * np.diff(th))])
    theta = np.interp(t, tt, th)
    return theta, R.residual_m_from_theta(theta, inv, beta)


def check_residual(steps: int = 100_000, lr_adam: float = 1e-3, lr_sgd: float = 0.03, momentum: float = 0.9,
                   betas=(0.5, 1.0, 2.0), kappa: float = 1.0, theta0: float = 1.0, m0: float = 1.0) -> dict:
    """theory/05: BOS residual norm m: Adam (eps -> 0) grows m by ~rho lr per step (linear);
    SGD (momentum, effective step lr/(1-mu)) like (beta^2/2)^{1/4} sqrt(log t); their ratio."""
    b = len(betas)
    inst = M.stack([M.make_residual_instance(kappa, be) for be in betas])
    p0 = {"theta": np.full(b, theta0), "m": np.full(b, m0)}
    grid = log_grid(steps, 20)
    adam = simulate("residual", inst, p0, lr_adam, grid, Optimiser("adam", eps=0.0))
    sgd = simulate("residual", inst, p0, lr_sgd, grid, Optimiser("sgd", momentum=momentum))
    rho = R.adam_linear_rate(lr_adam)
    t_sgd = grid * lr_sgd / (1 - momentum)
    pred_sgd = np.stack([residual_sgd_prediction(theta0, m0, kappa, be, t_sgd)[1] for be in betas])
    pred_adam = m0 + rho * lr_adam * grid
    ratio_pred = (pred_adam[-1] - m0) / (pred_sgd[:, -1] - m0)
    ratio_sim = (adam.params["m"][:, -1] - m0) / (sgd.params["m"][:, -1] - m0)
    slope_adam = np.polyfit(grid[grid >= steps // 10], adam.params["m"][0, grid >= steps // 10], 1)[0] / lr_adam
    asym = (np.asarray(betas) ** 2 / 2) ** 0.25 * np.sqrt(np.log(2 * kappa * t_sgd[-1]))
    rows = [("Adam dm/step / lr (rho)", round(rho, 4), round(float(slope_adam), 4)),
            ("Adam m at end", round(float(pred_adam[-1]), 3), adam.params["m"][:, -1].round(3).tolist()),
            ("SGD m at end (flow prediction)", pred_sgd[:, -1].round(3).tolist(), sgd.params["m"][:, -1].round(3).tolist()),
            ("SGD m, leading order (beta^2/2)^1/4 sqrt(log 2 kappa t)", asym.round(3).tolist(), sgd.params["m"][:, -1].round(3).tolist()),
            ("growth ratio Adam/SGD", ratio_pred.round(2).tolist(), ratio_sim.round(2).tolist())]
    ok = bool(np.all(np.abs(ratio_sim / ratio_pred - 1) < 0.1) and abs(slope_adam / rho - 1) < 0.05)
    return {"name": "residual", "doc": "theory/05_residual_peak.md",
            "statement": "residual peak: Adam grows ||Res<s>|| linearly in steps, SGD like sqrt(log t)",
            "rows": rows, "ok": ok,
            "curves": {"steps": grid, "adam": adam.params["m"], "sgd": sgd.params["m"], "pred_adam": pred_adam,
                       "pred_sgd": pred_sgd, "betas": list(betas)}}


def relu_invariant(y, s):
    """sum_v ReLU(y_v)^2 - ||s - mean s||^2: conserved by gradient flow on the ReLU model (theory/06)."""
    return np.sum(np.maximum(y, 0) ** 2, axis=-1) - _centred_norm(s) ** 2


def check_relu(seed: int = 0, n_types: int = 4, n_contexts: int = 8, steps: int = 100_000, lr: float = 1.0,
               batch: int = 4) -> dict:
    """theory/06: ReLU attention: loss -> 0 with x_v <= 0 (non-BOS keys switched off), y bounded
    (invariant), no growth of y over the last decade; contrast with softmax on the same instances."""
    rng = np.random.default_rng(seed)
    inst = M.stack([M.random_instance(rng, n_types, n_contexts, w=float(rng.uniform(1, 6))) for _ in range(batch)])
    p0 = {"y": rng.normal(0, 1, (batch, n_types)), "x": rng.uniform(0.5, 2, (batch, n_types)),
          "s": rng.normal(0, 1, (batch, n_types))}
    grid = log_grid(steps, 20)
    tr = simulate("relu", inst, p0, lr, grid, "gd")
    sm = simulate("softmax", inst, {"y": p0["y"], "s": p0["s"]}, lr, grid, "gd")
    y = tr.params["y"]
    i = np.searchsorted(grid, steps // 10)
    growth = float(np.max(y[:, -1] - y[:, i]))
    sm_growth = float(np.min(sm.params["y"][:, -1] - sm.params["y"][:, i]))
    inv = relu_invariant(y, tr.params["s"])
    bound = np.sqrt(np.maximum(inv[:, 0], 0) + np.max(_centred_norm(tr.params["s"]), axis=1) ** 2)
    rows = [("max y growth over last decade (ReLU)", 0.0, growth),
            ("min y growth over last decade (softmax, same instances)", round(0.5 * np.log(10), 3), round(sm_growth, 3)),
            ("final loss / initial loss (ReLU)", 0.0, float(np.max(tr.loss[:, -1] / tr.loss[:, 0]))),
            ("final max_v ReLU(y_v) (BOS weight x (w+1))", "bounded", float(np.max(np.maximum(y[:, -1], 0)))),
            ("invariant drift (GD)", 0.0, float(np.max(np.abs(inv[:, -1] - inv[:, 0])))),
            ("max_v ReLU(y_v) <= sqrt(I+ + max||s_hat||^2)", bound.round(3).tolist(), np.max(np.maximum(y, 0), axis=(1, 2)).round(3).tolist())]
    ok = growth < 1e-3 and float(np.max(tr.loss[:, -1] / tr.loss[:, 0])) < 1e-6
    return {"name": "relu", "doc": "theory/06_relu_attention.md",
            "statement": "ReLU attention: the head outputs zero without a sink; the BOS logit stays bounded",
            "rows": rows, "ok": bool(ok),
            "curves": {"t": tr.time()[0][1:], "y_relu": y[0][1:], "y_softmax": sm.params["y"][0][1:],
                       "loss_relu": tr.loss[0, 1:], "loss_softmax": sm.loss[0, 1:]}}


ALL_CHECKS = (check_gradients, check_shared_value, check_rates, check_monotone, check_residual, check_relu)
