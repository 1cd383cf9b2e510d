"""Predicted asymptotic rates and constants of the reduced models, and fits of measured curves.

Gradient-flow time t (t = lr * step for gradient descent). See theory/03_rates.md for the derivation
of the randomised softmax model's asymptotics:

    y_v(t) = 1/2 log t - log k_v + o(1),  ||s(t) - mean s(t)|| = D t^{-1/2} (1 + o(1)),
    L(t) = N / (4 t) (1 + o(1)),

N the number of token types with pi_v > 0, k the unique positive solution of k * (Q k) = 1/2,
and theory/05_residual_peak.md for the residual model.
"""

from __future__ import annotations

import numpy as np

from toybb.errors import ConfigError
from toybb.theory.models import AttentionInstance

SINK_LOG_SLOPE = 0.5  # c in y ~ c log t
DRAIN_EXPONENT = 0.5  # a in ||s - mean s|| ~ t^-a
LOSS_EXPONENT = 1.0  # b in L ~ t^-b


def _fisher(p):
    return np.diag(p) - np.outer(p, p)


def quadratic_form(inst: AttentionInstance):
    """The leading-order loss in eps_v = e^{-y_v} with s slaved, L = 1/2 eps^T Q eps (theory/03).

    Returns (Q [n, n], B [V, n], active [N] bool): Q_uv = pi_v A_v delta_uv - b_u^T M^+ b_v with
    A_v = sum_c r_c z_c^T F_v z_c, b_v = pi_v F_v zbar, M = sum_v pi_v F_v; the slaved BOS value is
    s_hat = -M^+ B eps (B's columns are b_v). Only active types (pi_v > 0) are kept.
    """
    pi, p, z, r = (np.asarray(a, np.float64) for a in (inst.pi, inst.p, inst.z, inst.r))
    act = pi > 0
    F = np.stack([_fisher(row) for row in p])  # [N, V, V]
    zbar = r @ z
    A = np.einsum("c,ci,nij,cj->n", r, z, F, z)
    M = np.einsum("n,nij->ij", pi, F)
    Mp = np.linalg.pinv(M, rcond=1e-12, hermitian=True)
    B = (pi[:, None] * np.einsum("nij,j->ni", F, zbar)).T  # [V, N]
    Q = np.diag(pi * A) - B.T @ Mp @ B
    return Q[np.ix_(act, act)], B[:, act], act


def context_variance(inst: AttentionInstance) -> np.ndarray:
    """sigma_v^2 = sum_c r_c (z_c - zbar)^T F_v (z_c - zbar): the context randomness each type sees
    [N]. The sink diverges for types with sigma_v^2 > 0 (theory/02)."""
    p, z, r = (np.asarray(a, np.float64) for a in (inst.p, inst.z, inst.r))
    dz = z - r @ z
    return np.array([np.einsum("c,ci,ij,cj->", r, dz, _fisher(row), dz) for row in p])


def solve_k(Q: np.ndarray, iters: int = 100) -> np.ndarray:
    """The unique k > 0 with k_v (Q k)_v = 1/2 for all v: the minimiser of the strictly convex
    1/2 k^T Q k - 1/2 sum log k_v (Q positive definite). Damped Newton."""
    n = Q.shape[0]
    k = 1.0 / np.sqrt(2 * np.maximum(np.diag(Q), 1e-300))
    for _ in range(iters):
        g = Q @ k - 0.5 / k
        H = Q + np.diag(0.5 / k**2)
        step = np.linalg.solve(H, g)
        a = 1.0
        while np.any(k - a * step <= 0):
            a *= 0.5
        k = k - a * step
        if np.max(np.abs(g * k)) < 1e-13:
            break
    if not np.all(np.isfinite(k)) or np.max(np.abs(k * (Q @ k) - 0.5)) > 1e-8:
        raise ConfigError("no asymptotic regime: Q is not positive definite (every token type needs "
                          "context randomness it can see, sigma_v^2 > 0)")
    return k


def predicted_softmax(inst: AttentionInstance) -> dict:
    """Asymptotic constants of the randomised softmax model under gradient flow (theory/03).

    Returns c, a, b (the rates), k [n] (y_v = 1/2 log t - log k_v), drain_const D
    (||s - mean s|| ~ D t^-1/2), loss_const N/4 (L ~ N / (4 t)), n_active, sigma2 [N].
    """
    Q, B, act = quadratic_form(inst)
    sig = context_variance(inst)
    if np.any(sig[act] <= 1e-14):
        raise ConfigError("a token type sees no context randomness (sigma_v^2 = 0): its sink logit stays "
                          "finite (theory/02); the rates of theory/03 need sigma_v^2 > 0 for every type")
    k = solve_k(Q)
    pi, p = np.asarray(inst.pi), np.asarray(inst.p)
    M = np.einsum("n,nij->ij", pi, np.stack([_fisher(row) for row in p]))
    s_dir = np.linalg.pinv(M, rcond=1e-12, hermitian=True) @ (B @ k)
    n = int(act.sum())
    sup = output_support(inst)
    return {"c": SINK_LOG_SLOPE, "a": DRAIN_EXPONENT, "b": LOSS_EXPONENT, "k": k, "active": act, "support": sup,
            "drain_const": float(np.linalg.norm(s_dir[sup] - s_dir[sup].mean())), "loss_const": n / 4.0,
            "n_active": n, "sigma2": sig}


def output_support(inst: AttentionInstance) -> np.ndarray:
    """[V] bool: outputs that some active row can produce. Only these coordinates of s matter;
    the drain ||s - mean s|| is measured over them (other coordinates never move)."""
    return (np.asarray(inst.p)[np.asarray(inst.pi) > 0] > 0).any(0)


def predicted_softmax_curves(inst: AttentionInstance, t: np.ndarray) -> dict:
    """Leading-order curves at flow times t: y [n_active, G], drain [G], loss [G]."""
    pr = predicted_softmax(inst)
    t = np.asarray(t, np.float64)
    return {"y": 0.5 * np.log(t)[None, :] - np.log(pr["k"])[:, None],
            "drain": pr["drain_const"] * t**-0.5, "loss": pr["loss_const"] / t}


# ---------------------------------------------------------------------------------------------
# residual-peak model (theory/05)


def residual_invariant(theta, m, beta):
    """I = m^4 + 2 beta^2 m^2 - 2 beta^2 theta^2, conserved by gradient flow on the residual model."""
    return m**4 + 2 * beta**2 * m**2 - 2 * beta**2 * theta**2


def residual_m_from_theta(theta, inv, beta):
    """m given theta on the gradient-flow invariant: m^2 = -beta^2 + sqrt(beta^4 + I + 2 beta^2 theta^2)."""
    return np.sqrt(-beta**2 + np.sqrt(beta**4 + inv + 2 * beta**2 * np.asarray(theta) ** 2))


def adam_ratio(delta: float, b1: float = 0.9, b2: float = 0.99) -> float:
    """Stationary Adam step / lr (eps = 0) for a positive gradient decaying by e^{-delta} per step:
    (1 - b1) / (1 - b1 e^delta) * sqrt((1 - b2 e^{2 delta}) / (1 - b2)); needs b2 e^{2 delta} < 1."""
    if b2 * np.exp(2 * delta) >= 1 or b1 * np.exp(delta) >= 1:
        return 0.0  # the gradient shrinks faster than Adam's memory: steps collapse
    return float((1 - b1) / (1 - b1 * np.exp(delta)) * np.sqrt((1 - b2 * np.exp(2 * delta)) / (1 - b2)))


def adam_linear_rate(lr: float, b1: float = 0.9, b2: float = 0.99) -> float:
    """rho with m_k ~ m_0 + rho lr k under Adam (eps = 0) on the residual model: theta also moves by
    rho lr per step, so y grows by ~rho lr per step and the gradients decay by e^{-2 rho lr};
    rho solves rho = adam_ratio(2 rho lr) (fixed point, theory/05)."""
    rho = 1.0
    for _ in range(200):
        rho = 0.5 * rho + 0.5 * adam_ratio(2 * rho * lr, b1, b2)
    return rho


# ---------------------------------------------------------------------------------------------
# fits


def sink_logit_with_weight_decay(sigma2, lam):
    """Finite sink logit under L2 weight decay lam (theory/03, "Weight decay"): the single-type flow
    dy/dt = sigma2 e^{-2y} - lam y has the stable fixed point y* = W(2 sigma2 / lam) / 2 (W: Lambert W),
    so with decay the sink logit stops growing near 1/2 log(2 sigma2 / lam) instead of diverging like
    1/2 log t. Arrays broadcast."""
    sigma2, lam = np.asarray(sigma2, np.float64), np.asarray(lam, np.float64)
    if np.any(sigma2 <= 0) or np.any(lam <= 0):
        raise ConfigError("sigma2 and the weight decay lam must be positive")
    x = 2.0 * sigma2 / lam
    u = np.log1p(x)  # Newton on u e^u = x from log(1 + x) (an upper bound of W for x > 0), monotone
    for _ in range(60):
        u = u - (u * np.exp(u) - x) / (np.exp(u) * (1.0 + u))
    return 0.5 * u


def fit_rates(steps, values, *, decades: float = 1.0) -> dict:
    """Fit rates on the last `decades` decade(s) of a curve (steps > 0).

    Returns {"log_slope": d value / d log step (e.g. c for a sink logit ~ c log t),
             "power": d log|value| / d log step (e.g. -a for a drain ~ t^-a, -b for a loss ~ t^-b),
             "intercept_log": value - log_slope log step, "window": (lo, hi), "n": points used}.
    Applicable to trained trajectories (steps of a run, metric values).
    """
    steps = np.asarray(steps, np.float64)
    values = np.asarray(values, np.float64)
    if steps.shape != values.shape or steps.ndim != 1:
        raise ConfigError(f"steps and values must be 1-d arrays of equal length, got {steps.shape} and {values.shape}")
    ok = (steps > 0) & np.isfinite(values)
    if ok.sum() < 3:
        raise ConfigError("need at least 3 finite points at positive steps to fit rates")
    hi = steps[ok].max()
    lo = hi / 10**decades
    sel = ok & (steps >= lo)
    if sel.sum() < 3:
        raise ConfigError(f"need at least 3 points in the last {decades} decade(s) [{lo:g}, {hi:g}], got {int(sel.sum())}")
    lt = np.log(steps[sel])
    slope, icpt = np.polyfit(lt, values[sel], 1)
    nz = sel & (values != 0)
    power = float(np.polyfit(np.log(steps[nz]), np.log(np.abs(values[nz])), 1)[0]) if nz.sum() >= 3 else float("nan")
    return {"log_slope": float(slope), "power": power, "intercept_log": float(icpt), "window": (float(lo), float(hi)),
            "n": int(sel.sum())}
