"""The linearized network: what gradient descent on MSE does to a network in its NTK regime.

Expanding the network to first order around its initialization θ₀,
f_lin(x; θ) = f0(x) + ∂f(x; θ₀)/∂θ · (θ − θ₀), makes gradient descent on ntklab's MSE
L = (1/n) Σ_i ‖f(x_i) − y_i‖² a linear ODE in function space. With learning rate ``lr`` and
the empirical NTK at init K = Θ₀(X, X) (n, n), the training outputs move by
df(X)/dt = −η K (f(X) − Y), η = 2·lr / n per step (gradient flow; exact for small lr), so
after t steps

    f_t(x) = f0(x) + K(x, X) K⁻¹ (I − e^{−ηKt}) (Y − f0(X)),

and t → ∞ gives kernel regression from f0 (ridgeless). A wide network trained with a small
learning rate in the ntk parameterization follows this curve (tests/test_linearized.py).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg


def linearized_predict(
    k_train: np.ndarray,
    k_cross: np.ndarray,
    y: np.ndarray,
    f0_train: np.ndarray,
    f0_cross: np.ndarray,
    *,
    lr: float,
    steps: float,
) -> np.ndarray:
    """f_t(x) of the linearized network after ``steps`` of gradient descent at ``lr``.

    Parameters
    ----------
    k_train : (n, n) eNTK at init on the training points (float64; scalar per output pair,
        e.g. the ``trace`` or ``single`` mode, or the exact kernel for one output)
    k_cross : (m, n) eNTK at init between the evaluation and training points
    y : (n, K) targets; f0_train (n, K), f0_cross (m, K): the network's outputs at init
    lr : learning rate of the loss L = (1/n) Σ_i ‖f(x_i) − y_i‖²
    steps : t, gradient steps (a float is fine: gradient-flow time in steps)

    Returns
    -------
    (m, K) float64: f0(x) + K(x, X) V diag((1 − e^{−η s t}) / s) Vᵀ (Y − f0(X)), with
    K = V diag(s) Vᵀ and η = 2·lr / n; a zero eigenvalue contributes its limit η t.
    """
    k = np.asarray(k_train, np.float64)
    n = k.shape[0]
    s, v = scipy.linalg.eigh(k)
    s = np.clip(s, 0.0, None)
    eta_t = 2.0 * lr / n * steps
    gain = np.where(s > 0, -np.expm1(-eta_t * s) / np.where(s > 0, s, 1.0), eta_t)
    resid = np.asarray(y, np.float64) - np.asarray(f0_train, np.float64)
    return np.asarray(f0_cross, np.float64) + np.asarray(k_cross, np.float64) @ (
        v @ (gain[:, None] * (v.T @ resid))
    )
