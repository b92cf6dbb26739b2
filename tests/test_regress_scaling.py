"""Kernel ridge regression vs direct solves and scikit-learn; exponent recovery."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.kernel_ridge import KernelRidge

from ntklab.regress import KernelRegressor
from ntklab.scaling import fit_power_law, fit_with_ci, paired_difference


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


def _power_law_table(rng: np.random.Generator, alpha: float, noise: float, seeds: int, n: np.ndarray):
    """Losses (S, m) of a power law 2·n^-α with a per-seed offset and log-normal cell noise."""
    offset = rng.normal(0, 0.1, size=(seeds, 1))
    return 2.0 * n**-alpha * np.exp(offset + rng.normal(0, noise, size=(seeds, len(n))))


def test_intervals_cover_the_true_exponent_and_difference() -> None:
    """200 synthetic experiments (3 seeds x 7 points, 10 % log-normal noise, as the default
    grid): the 95 % interval of α and of the paired difference α_A − α_B each contain the true
    value in 90–98 % of them. The two methods share each seed's offset and half their noise,
    as a network and its eNTK share a seed's data subset and initialization."""
    rng = np.random.default_rng(2)  # seeds 1-4 give 91-95 % (α) and 92-97 % (difference)
    n = 64.0 * 2 ** np.arange(7)
    hit_a = hit_d = 0
    for rep in range(200):
        shared = _power_law_table(rng, 0.0, 0.07, 3, n)
        a = _power_law_table(rng, 0.4, 0.07, 3, n) * shared
        b = _power_law_table(rng, 0.25, 0.07, 3, n) * shared
        fit = fit_with_ci(n, a, n_boot=400, seed=rep)
        hit_a += fit.ci_low <= 0.4 <= fit.ci_high
        d = paired_difference(n, a, b, n_boot=400, seed=rep)
        hit_d += d.ci_low <= 0.15 <= d.ci_high
    assert 180 <= hit_a <= 196, hit_a
    assert 180 <= hit_d <= 196, hit_d


def test_no_interval_without_the_data_for_one() -> None:
    """One seed and two grid points: no interval (None), not a zero-width one."""
    fit = fit_with_ci(np.array([64.0, 128.0]), np.array([[0.5, 0.4]]), n_boot=100)
    assert fit.ci_low is None and fit.ci_high is None and np.isfinite(fit.alpha)
    d = paired_difference(np.array([64.0, 128.0]), np.array([[0.5, 0.4]]), np.array([[0.6, 0.5]]))
    assert d.ci_low is None and abs(d.delta - (fit.alpha - fit_power_law([64, 128], [0.6, 0.5])[0])) < 1e-12


def test_a_curve_that_bends_is_flagged() -> None:
    """A plateau (a floor under the power law) and a bump at small n are flagged
    (fit_ok false); a clean power law with the same noise is not."""
    rng = np.random.default_rng(0)
    n = 64.0 * 2 ** np.arange(7)
    noise = lambda: np.exp(rng.normal(0, 0.03, size=(3, len(n))))  # noqa: E731
    clean = fit_with_ci(n, 2.0 * n**-0.4 * noise(), n_boot=100)
    assert clean.fit_ok and clean.fit_rms < 0.03
    plateau = fit_with_ci(n, (2.0 * n**-0.8 + 0.1) * noise(), n_boot=100)
    assert not plateau.fit_ok and plateau.fit_p < 0.01
    bump = 2.0 * n**-0.4 * noise()
    bump[:, :2] *= 1.6  # worse than the law at the two smallest n (an untrained start)
    assert not fit_with_ci(n, bump, n_boot=100).fit_ok


def test_fit_n_min_fits_past_the_plateau() -> None:
    """A curve on a plateau (0.65) up to n = 256 and a power law 4·n^-0.3 beyond: fitted from
    n = 512 on (``fit.n_min``), α, its interval and the paired difference are those of the power
    law, on 4 of 7 grid points; fitted on the whole grid, α is pulled down and the fit bends."""
    from ntklab.config import FitConfig
    from ntklab.experiments.tidy import differences, exponents

    rng = np.random.default_rng(3)
    n = 64.0 * 2 ** np.arange(7)
    law = 4.0 * n**-0.3
    law[n <= 256] = 0.65  # flat up to 256, then the law (0.62 at n = 512)
    rows = [
        {"method": m, "metric": "test_mse", "n": int(n[j]), "seed": s, "value": float(v)}
        for m, scale in (("nn", 1.0), ("entk", 1.1))
        for s, vals in enumerate(scale * law * np.exp(rng.normal(0, 0.02, size=(3, len(n)))))
        for j, v in enumerate(vals)
    ]
    whole = exponents(rows, FitConfig(), seed=0)["nn"]
    assert whole["alpha"] < 0.25 and not whole["fit_ok"]
    fitted = exponents(rows, FitConfig(n_min=512), seed=0)
    for m in ("nn", "entk"):
        e = fitted[m]
        assert (e["fit_n_min"], e["fit_n_max"]) == (512, 4096) and e["fit_ok"]
        assert e["ci_low"] <= 0.3 <= e["ci_high"] and e["ci_high"] - e["ci_low"] < 0.05
    d = differences(rows, FitConfig(n_min=512), seed=0)["nn-entk"]
    assert d["fit_n_min"] == 512 and abs(d["delta"]) < 0.02  # the same law: α_nn − α_entk = 0
