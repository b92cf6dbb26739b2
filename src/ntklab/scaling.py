"""Power-law fits of loss against training-set size, with bootstrap confidence intervals.

log L = log a − α log n (least squares), or L = a·n^(−α) + c with ``offset=True``.
The confidence interval resamples seeds (for each n, the loss is averaged over a resample of
seeds) and points (the n values), refits, and takes percentiles of α (docs/design.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.optimize


@dataclass(frozen=True)
class PowerLawFit:
    """α with its CI; ``a`` and ``c`` of L = a n^-α + c (c = 0 without offset)."""

    alpha: float
    a: float
    c: float
    ci_low: float
    ci_high: float
    n_boot: int

    def as_dict(self) -> dict[str, float]:
        return {"alpha": self.alpha, "ci_low": self.ci_low, "ci_high": self.ci_high, "a": self.a, "c": self.c}


def fit_power_law(n: np.ndarray, loss: np.ndarray, offset: bool = False) -> tuple[float, float, float]:
    """(α, a, c) for L ≈ a·n^(−α) + c; log-log least squares when ``offset`` is False.

    n, loss : (m,) positive. With offset, minimises Σ (log L − log(a n^-α + c))², c ≥ 0.
    """
    n = np.asarray(n, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    ln, ll = np.log(n), np.log(np.maximum(loss, 1e-300))
    slope, intercept = np.polyfit(ln, ll, 1)
    alpha, a = -slope, float(np.exp(intercept))
    if not offset:
        return float(alpha), a, 0.0

    def resid(p: np.ndarray) -> np.ndarray:
        la, al, c = p
        return np.log(np.exp(la) * n ** (-al) + c) - ll

    x0 = np.array([np.log(a), max(alpha, 1e-3), 0.0])
    res = scipy.optimize.least_squares(resid, x0, bounds=([-np.inf, -10, 0], [np.inf, 10, loss.min()]))
    la, al, c = res.x
    return float(al), float(np.exp(la)), float(c)


def fit_with_ci(
    n: np.ndarray,
    losses: np.ndarray,
    *,
    offset: bool = False,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> PowerLawFit:
    """Fit α on the seed-mean losses and bootstrap a ``ci`` interval over seeds and points.

    n : (m,) grid; losses : (S, m) one row per seed (NaN = missing, ignored in means).
    """
    n = np.asarray(n, dtype=np.float64)
    losses = np.atleast_2d(np.asarray(losses, dtype=np.float64))
    alpha, a, c = fit_power_law(n, np.nanmean(losses, 0), offset)
    rng = np.random.default_rng(seed)
    s, m = losses.shape
    need = 3 if offset else 2
    boots = []
    for _ in range(n_boot):
        rows = rng.integers(0, s, size=s)
        pts = rng.integers(0, m, size=m)
        if len(np.unique(pts)) < min(need, m):
            continue
        mean = np.nanmean(losses[rows][:, pts], 0)
        if not np.all(np.isfinite(mean)):
            continue
        boots.append(fit_power_law(n[pts], mean, offset)[0])
    if boots:
        lo, hi = np.percentile(boots, [50 * (1 - ci), 50 * (1 + ci)])
    else:
        lo = hi = float("nan")
    return PowerLawFit(alpha, a, c, float(lo), float(hi), len(boots))
