"""Power-law fits of loss against training-set size, with bootstrap intervals and a fit check.

Model, per method: log L_sj = log(a·n_j^(−α) + c) + u_s + e_sj for repetition s and grid point
j (c = 0 without ``offset``; u_s a repetition's overall offset, which does not change α).

* **Point estimate.** α, a, c fitted (least squares in log space) to the geometric mean over
  repetitions ȳ_j = mean_s log L_sj.
* **Interval: residual bootstrap over (seed, n) cells.** The cell residuals
  r_sj = log L_sj − log fit_j − u_s (u_s = mean_j of the rest), inflated by √(N / dof) with
  N cells and dof = N − S − p (p = 2 parameters, 3 with offset), are resampled with
  replacement over all cells and added back to the fit; each resample is refitted, and the
  interval is the percentile interval of those α. Misfit of the power law is part of the
  residuals, so a curve that bends widens its interval. On synthetic power laws with
  log-normal noise this covers the true α in ≈ 95 % of repetitions at 3 seeds × 7 points
  (tests/test_regress_scaling.py); resampling seeds and points as pairs instead counts the
  noise twice (≈ 99 %) and seeds alone, with 3 of them, far too little (≈ 75 %).
* **No interval without the data for one.** With dof < :data:`MIN_DOF` (one seed and two
  points, say) the interval is ``None``: a zero-width interval would claim a certainty the
  data cannot give.
* **Differences.** :func:`paired_difference` bootstraps α_A − α_B with the *same* resampled
  cells for both methods (paired), on the (seed, n) cells both have, so noise shared by the
  two (the same data subset, the same initialization) cancels.
* **Goodness of fit.** ``fit_rms`` is the root-mean-square log residual of the mean curve;
  ``fit_p`` the p-value of the lack-of-fit F test (mean-curve residuals against the scatter
  between repetitions; with one repetition, the t test of a quadratic term in log n). The fit
  is flagged (``fit_ok`` False) when the curve bends significantly (p < :data:`BEND_P`) *and*
  by a visible amount (``fit_rms`` > :data:`BEND_RMS`, i.e. the power law misses the mean
  curve by more than ≈ 3 % on average): a plateau or a bump at small n, which a single slope
  would misreport.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.optimize
import scipy.stats

MIN_DOF = 2  # fewer residual degrees of freedom than this: no interval
BEND_P = 0.01  # lack-of-fit p-value below which a bend is significant ...
BEND_RMS = 0.03  # ... and the RMS log residual above which it is large enough to flag


@dataclass(frozen=True)
class PowerLawFit:
    """α with its CI (None when the data cannot support one) and the fit's goodness.

    ``a`` and ``c`` of L = a n^-α + c (c = 0 without offset); ``fit_rms`` the RMS log
    residual of the mean curve; ``fit_p`` the lack-of-fit p-value (None when untestable);
    ``fit_ok`` False when the curve bends (see module docstring); ``fit_n_min``/``fit_n_max``
    the fitted range.
    """

    alpha: float
    a: float
    c: float
    ci_low: float | None
    ci_high: float | None
    n_boot: int
    fit_rms: float = float("nan")
    fit_p: float | None = None
    fit_ok: bool = True
    fit_n_min: int = 0
    fit_n_max: int = 0

    def as_dict(self) -> dict[str, float | bool | int | None]:
        return {
            "alpha": self.alpha,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "a": self.a,
            "c": self.c,
            "fit_rms": self.fit_rms,
            "fit_p": self.fit_p,
            "fit_ok": self.fit_ok,
            "fit_n_min": self.fit_n_min,
            "fit_n_max": self.fit_n_max,
        }


def fit_power_law(n: np.ndarray, loss: np.ndarray, offset: bool = False) -> tuple[float, float, float]:
    """(α, a, c) for L ≈ a·n^(−α) + c; log-log least squares when ``offset`` is False.

    n, loss : (m,) positive. With offset, minimises Σ (log L − log(a n^-α + c))², c ≥ 0.
    """
    return _fit_log(
        np.asarray(n, np.float64), np.log(np.maximum(np.asarray(loss, np.float64), 1e-300)), offset
    )


def _fit_log(n: np.ndarray, ll: np.ndarray, offset: bool) -> tuple[float, float, float]:
    """(α, a, c) from log losses ll (m,) at n (m,)."""
    ln = np.log(n)
    slope, intercept = np.polyfit(ln, ll, 1)
    alpha, a = -slope, float(np.exp(intercept))
    if not offset:
        return float(alpha), a, 0.0

    def resid(p: np.ndarray) -> np.ndarray:
        la, al, c = p
        return np.log(np.exp(la) * n ** (-al) + c) - ll

    top = max(float(np.exp(ll).min()), 1e-300)
    x0 = np.array([np.log(a), max(alpha, 1e-3), 0.0])
    res = scipy.optimize.least_squares(resid, x0, bounds=([-np.inf, -10, 0], [np.inf, 10, top]))
    la, al, c = res.x
    return float(al), float(np.exp(la)), float(c)


def _log_curve(n: np.ndarray, a: float, alpha: float, c: float) -> np.ndarray:
    return np.log(a * n ** (-alpha) + c)


@dataclass(frozen=True)
class _Cells:
    """A method's log losses (S, m) with its fit: the pieces the bootstrap resamples."""

    n: np.ndarray  # (m,)
    logs: np.ndarray  # (S, m), NaN where missing
    fit: tuple[float, float, float]  # α, a, c
    curve: np.ndarray  # (m,) log of the fitted curve
    seed_offset: np.ndarray  # (S, 1)
    resid: np.ndarray  # (S, m) inflated residuals, NaN where missing
    dof: int


def _cells(n: np.ndarray, losses: np.ndarray, offset: bool) -> _Cells:
    logs = np.log(np.where(losses > 0, losses, np.nan))
    alpha, a, c = _fit_log(n, np.nanmean(logs, 0), offset)
    curve = _log_curve(n, a, alpha, c)
    dev = logs - curve
    seed_offset = np.nanmean(dev, 1, keepdims=True)
    raw = dev - seed_offset
    cells = int(np.isfinite(raw).sum())
    dof = cells - logs.shape[0] - (3 if offset else 2)
    resid = raw * np.sqrt(cells / dof) if dof > 0 else raw
    return _Cells(n, logs, (alpha, a, c), curve, seed_offset, resid, dof)


def _resample(cells: _Cells, idx: np.ndarray, offset: bool) -> np.ndarray:
    """α refitted for every row of ``idx`` (B, F): flat indices into the F finite residual
    cells, whose residuals are added back to the fit (module docstring). Returns (B,)."""
    mask = np.isfinite(cells.resid)
    pool = cells.resid[mask]
    boot = np.full((len(idx), *cells.resid.shape), np.nan)
    boot[:, mask] = pool[idx]
    mean = np.nanmean(cells.curve + cells.seed_offset + boot, 1)  # (B, m)
    if not offset:  # the log-log slope of every resample at once
        xc = np.log(cells.n) - np.log(cells.n).mean()
        return -(mean - mean.mean(1, keepdims=True)) @ xc / (xc @ xc)
    return np.array([_fit_log(cells.n, row, offset)[0] for row in mean])


def _goodness(cells: _Cells, offset: bool) -> tuple[float, float | None]:
    """(RMS log residual of the mean curve, lack-of-fit p-value or None)."""
    s, m = cells.logs.shape
    mean = np.nanmean(cells.logs, 0)
    e = mean - cells.curve
    rms = float(np.sqrt(np.mean(e**2)))
    p_par = 3 if offset else 2
    if s >= 2 and m > p_par:
        within = cells.logs - mean - (cells.seed_offset - np.nanmean(cells.seed_offset))
        df_pe = int(np.isfinite(within).sum()) - s - m + 1
        ss_pe = float(np.nansum(within**2))
        if df_pe > 0 and ss_pe > 0:
            f = (s * float(np.sum(e**2)) / (m - p_par)) / (ss_pe / df_pe)
            return rms, float(scipy.stats.f.sf(f, m - p_par, df_pe))
    if m >= 4 and not offset:
        ln = np.log(cells.n) - np.log(cells.n).mean()
        design = np.stack([np.ones(m), ln, ln**2], 1)
        coef, *_ = np.linalg.lstsq(design, mean, rcond=None)
        res = mean - design @ coef
        sigma2 = float(res @ res) / (m - 3)
        if sigma2 > 0:
            se = np.sqrt(sigma2 * np.linalg.inv(design.T @ design)[2, 2])
            return rms, float(2 * scipy.stats.t.sf(abs(coef[2]) / se, m - 3))
    return rms, None


def fit_with_ci(
    n: np.ndarray,
    losses: np.ndarray,
    *,
    offset: bool = False,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> PowerLawFit:
    """Fit α on the geometric mean over repetitions and bootstrap a ``ci`` interval over the
    (seed, n) cells (module docstring).

    n : (m,) grid; losses : (S, m) one row per repetition (NaN = missing, ignored).
    """
    n = np.asarray(n, dtype=np.float64)
    losses = np.atleast_2d(np.asarray(losses, dtype=np.float64))
    cells = _cells(n, losses, offset)
    alpha, a, c = cells.fit
    rms, p = _goodness(cells, offset)
    lo = hi = None
    boots: list[float] = []
    if cells.dof >= MIN_DOF:
        rng = np.random.default_rng(seed)
        size = int(np.isfinite(cells.resid).sum())
        boots = _resample(cells, rng.integers(0, size, (n_boot, size)), offset).tolist()
        lo, hi = (float(v) for v in np.percentile(boots, [50 * (1 - ci), 50 * (1 + ci)]))
    bends = p is not None and p < BEND_P and rms > BEND_RMS
    return PowerLawFit(float(alpha), a, c, lo, hi, len(boots), rms, p, not bends, int(n.min()), int(n.max()))


@dataclass(frozen=True)
class Difference:
    """α_A − α_B on the cells both methods have, with its paired bootstrap interval."""

    delta: float
    ci_low: float | None
    ci_high: float | None
    fit_n_min: int
    fit_n_max: int

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "delta": self.delta,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "fit_n_min": self.fit_n_min,
            "fit_n_max": self.fit_n_max,
        }


def paired_difference(
    n: np.ndarray,
    losses_a: np.ndarray,
    losses_b: np.ndarray,
    *,
    offset: bool = False,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> Difference:
    """α_A − α_B with a paired residual bootstrap: each resample draws the same (seed, n)
    cells for both methods, so what the two share (data subset, initialization) cancels.

    n : (m,); losses_a, losses_b : (S, m) on the same repetitions and grid; a cell missing in
    either is dropped from both.
    """
    n = np.asarray(n, dtype=np.float64)
    la = np.atleast_2d(np.asarray(losses_a, np.float64)).copy()
    lb = np.atleast_2d(np.asarray(losses_b, np.float64)).copy()
    both = np.isfinite(la) & np.isfinite(lb) & (la > 0) & (lb > 0)
    la[~both], lb[~both] = np.nan, np.nan
    ca, cb = _cells(n, la, offset), _cells(n, lb, offset)
    delta = ca.fit[0] - cb.fit[0]
    lo = hi = None
    if min(ca.dof, cb.dof) >= MIN_DOF:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, int(both.sum()), (n_boot, int(both.sum())))
        draws = _resample(ca, idx, offset) - _resample(cb, idx, offset)
        lo, hi = (float(v) for v in np.percentile(draws, [50 * (1 - ci), 50 * (1 + ci)]))
    return Difference(float(delta), lo, hi, int(n.min()), int(n.max()))
