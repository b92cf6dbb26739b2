"""Kernel ridge regression in float64 on a precomputed kernel.

f̂(x) = K(x, X) (K(X, X) + λ·(tr K / n)·I)⁻¹ Y   (docs/design.md)

Two exact solvers serve a grid of ridges λ:

* ``eigh``: K = V diag(s) Vᵀ once (≈ 10·n³ flops here), then every λ costs a product:
  f̂ = K(x, X) V diag(1 / (s + λ')) Vᵀ Y with λ' = λ·tr K / n. Ridgeless (λ = 0) adds the
  smallest jitter that makes the solve well-posed, ``max(0, n·ε·max(s) − min(s))``.
* ``cholesky``: one factorization per λ (n³/3 flops each), cheaper for short ridge grids.
  Ridgeless tries λ' = 0 and, if K is not positive definite in floating point, the smallest
  jitter of the ladder n·ε·(tr K / n)·100^k, k = 0, 1, ..., that factorizes.

``auto`` picks the cheaper one for the number of ridges. The jitter used is ``jitter_``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.linalg

EIGH_COST = 30.0  # eigh costs about this many Cholesky factorizations (measured on 2 cores)


class KernelRegressor:
    """Kernel ridge regression on a precomputed kernel.

    Parameters
    ----------
    ridges : sequence of float
        Candidate λ (relative to tr K / n); :meth:`select` picks one on validation data.
    solver : {"auto", "eigh", "cholesky"}

    Attributes
    ----------
    scale_ : float, tr K / n
    jitter_ : float, the shift added for λ = 0 (0 when K is well conditioned)
    ridge_ : float, the λ chosen by :meth:`select` (else the first)
    eigvals_ (n,), eigvecs_ (n, n) : float64, with the ``eigh`` solver
    """

    def __init__(self, ridges: Sequence[float] = (0.0,), solver: str = "auto") -> None:
        self.ridges = tuple(float(r) for r in ridges)
        if solver == "auto":
            solver = "eigh" if len(self.ridges) > EIGH_COST else "cholesky"
        if solver not in ("eigh", "cholesky"):
            raise ValueError(f"solver must be 'auto', 'eigh' or 'cholesky'; got {solver!r}")
        self.solver = solver

    def fit(self, k_train: np.ndarray, y: np.ndarray) -> KernelRegressor:
        """Prepare the solve for K(X, X) (n, n) and targets ``y`` (n, K). K is not modified."""
        self.k_ = np.asarray(k_train, dtype=np.float64)
        self.y_ = np.asarray(y, dtype=np.float64)
        n = self.k_.shape[0]
        self.scale_ = float(np.trace(self.k_)) / n
        self.jitter_ = 0.0
        self._duals: dict[float, np.ndarray] = {}
        if self.solver == "eigh":
            s, v = scipy.linalg.eigh(self.k_, driver="evr")
            self.eigvals_, self.eigvecs_ = s, v
            self.vty_ = v.T @ self.y_
            self.jitter_ = max(0.0, n * np.finfo(np.float64).eps * max(s.max(), 0.0) - s.min())
        self.ridge_ = self.ridges[0]
        return self

    def _shift(self, ridge: float) -> float:
        return max(ridge * self.scale_, self.jitter_) if ridge == 0 else ridge * self.scale_

    def dual(self, ridge: float) -> np.ndarray:
        """Dual coefficients (n, K) = (K + λ'I)⁻¹ Y, cached per λ."""
        if ridge in self._duals:
            return self._duals[ridge]
        if self.solver == "eigh":
            d = self.eigvecs_ @ (self.vty_ / (self.eigvals_ + self._shift(ridge))[:, None])
        else:
            d = self._cholesky_solve(ridge)
        self._duals[ridge] = d
        return d

    def _cholesky_solve(self, ridge: float) -> np.ndarray:
        n = len(self.k_)
        shifts = [ridge * self.scale_]
        if ridge == 0:
            base = n * np.finfo(np.float64).eps * max(self.scale_, 1e-300)
            shifts += [base * 100.0**k for k in range(0, 9)]
        for shift in shifts:
            a = self.k_.copy()
            a[np.diag_indices(n)] += shift
            try:
                c = scipy.linalg.cho_factor(a, overwrite_a=True, check_finite=False)
            except np.linalg.LinAlgError:
                continue
            if ridge == 0:
                self.jitter_ = shift
            return scipy.linalg.cho_solve(c, self.y_, check_finite=False)
        raise np.linalg.LinAlgError("kernel matrix is not positive semi-definite even with jitter")

    def predict(self, k_cross: np.ndarray, ridge: float | None = None) -> np.ndarray:
        """Predictions (m, K) from K(x, X) (m, n)."""
        return np.asarray(k_cross, dtype=np.float64) @ self.dual(self.ridge_ if ridge is None else ridge)

    def select(self, k_val: np.ndarray, y_val: np.ndarray) -> float:
        """Choose λ from ``ridges`` with the lowest validation MSE; sets and returns ``ridge_``."""
        if len(self.ridges) > 1 and len(y_val) > 0:
            losses = [mse(self.predict(k_val, r), np.asarray(y_val, np.float64)) for r in self.ridges]
            self.ridge_ = self.ridges[int(np.nanargmin(losses))]
        return self.ridge_


def mse(pred: np.ndarray, y: np.ndarray) -> float:
    """Mean over samples of the squared error summed over outputs."""
    return float(((pred - y) ** 2).sum(-1).mean())


def zero_one(pred: np.ndarray, labels: np.ndarray) -> float:
    """0-1 error: argmax for K > 1 outputs, sign for one output (labels 0/1); NaN without labels."""
    if len(labels) and labels.min() < 0:
        return float("nan")
    guess = (pred[:, 0] > 0).astype(int) if pred.shape[1] == 1 else pred.argmax(1)
    return float((guess != labels).mean())
