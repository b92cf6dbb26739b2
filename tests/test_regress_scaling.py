"""Kernel ridge regression vs direct solves and scikit-learn; exponent recovery."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.kernel_ridge import KernelRidge

from ntklab.regress import KernelRegressor
from ntklab.scaling import fit_power_law, fit_with_ci


def kernel(n: int, m: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x, xs = rng.normal(size=(n, 5)), rng.normal(size=(m, 5))
    k = lambda a, b: np.exp(-0.5 * ((a[:, None] - b[None]) ** 2).sum(-1))  # noqa: E731
    return k(x, x), k(xs, x), rng.normal(size=(n, 3)), x


@pytest.mark.parametrize("solver", ["eigh", "cholesky"])
@pytest.mark.parametrize("lam", [1e-3, 0.5])
def test_matches_direct_solve_and_sklearn(solver: str, lam: float) -> None:
    k, ks, y, _ = kernel(60, 20)
    k0 = k.copy()
    pred = KernelRegressor([lam], solver=solver).fit(k, y).predict(ks)
    scaled = lam * np.trace(k) / len(k)
    direct = ks @ np.linalg.solve(k + scaled * np.eye(len(k)), y)
    sk = KernelRidge(alpha=scaled, kernel="precomputed").fit(k, y).predict(ks)
    np.testing.assert_allclose(pred, direct, rtol=0, atol=1e-8)
    np.testing.assert_allclose(pred, sk, rtol=0, atol=1e-8)
    np.testing.assert_array_equal(k, k0)  # the caller's kernel is not modified


def test_solvers_agree_on_a_ridge_grid_and_ridgeless_jitter() -> None:
    k, ks, y, _ = kernel(50, 10, seed=1)
    ridges = [0.0, 1e-4, 1e-2, 1.0]
    a = KernelRegressor(ridges, solver="eigh").fit(k, y)
    b = KernelRegressor(ridges, solver="cholesky").fit(k, y)
    for r in ridges[1:]:
        np.testing.assert_allclose(a.predict(ks, r), b.predict(ks, r), atol=1e-8)
    # a rank-deficient kernel: ridgeless needs a jitter, which is reported
    rng = np.random.default_rng(0)
    f = rng.normal(size=(40, 5))
    low = f @ f.T
    reg = KernelRegressor([0.0], solver="eigh").fit(low, rng.normal(size=(40, 1)))
    assert reg.jitter_ > 0 and np.all(np.isfinite(reg.predict(low[:5])))


def test_validation_selects_the_best_ridge() -> None:
    k, ks, y, _ = kernel(60, 30, seed=2)
    ridges = [1e-6, 1e-2, 10.0]
    reg = KernelRegressor(ridges).fit(k, y)
    chosen = reg.select(ks, ks @ np.linalg.solve(k + 10 * np.trace(k) / 60 * np.eye(60), y))
    assert chosen == 10.0


@pytest.mark.parametrize("alpha", [0.25, 0.8])
def test_exponent_recovered_from_synthetic_power_law(alpha: float) -> None:
    rng = np.random.default_rng(0)
    n = 2.0 ** np.arange(6, 14)
    losses = 3.0 * n**-alpha * np.exp(rng.normal(0, 0.03, size=(5, len(n))))
    fit = fit_with_ci(n, losses, n_boot=300, seed=1)
    assert abs(fit.alpha - alpha) < 0.02
    assert fit.ci_low < alpha < fit.ci_high
    assert fit.ci_high - fit.ci_low < 0.1


def test_offset_fit_recovers_exponent_and_floor() -> None:
    n = 2.0 ** np.arange(5, 16)
    alpha, a, c = fit_power_law(n, 2.0 * n**-0.6 + 0.05, offset=True)
    assert abs(alpha - 0.6) < 1e-3 and abs(c - 0.05) < 1e-3
    # without the offset the floor bends the fit and lowers α
    assert fit_power_law(n, 2.0 * n**-0.6 + 0.05)[0] < 0.5
