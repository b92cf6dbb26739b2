"""Regularized ZCA whitening, fitted on training data only.

With the training inputs flattened to ``X`` of shape (N, D):

    mu = mean of the rows of X                       shape (D,)
    C  = (X - mu)^T (X - mu) / N                      shape (D, D)
    C  = U diag(s) U^T                                 eigendecomposition, float64
    eps = reg * trace(C) / D                           (reg times the mean eigenvalue)
    W  = U diag((s + eps)^(-1/2)) U^T                  shape (D, D), symmetric
    z  = (x - mu) W                                    for every input x, train or test

This is the regularization of Shankar et al. (2020) and of the neural-tangents Myrtle
experiments: ``reg`` is relative to the mean eigenvalue, so it does not depend on the scale of
the data. There is no per-image centering or normalization; a caller that wants it applies it
before fitting. With ``reg -> 0`` and D < N the whitened training data has identity covariance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ntklab.errors import ConfigError, DataError

_CHUNK_ROWS = 4096


@dataclass(frozen=True, eq=False)
class ZCA:
    """A fitted ZCA whitening transform (see the module docstring for the formula).

    Attributes
    ----------
    mean : np.ndarray, float64, shape (D,)
        Training mean of the flattened inputs.
    matrix : np.ndarray, float64, shape (D, D)
        Symmetric whitening matrix ``W``.
    reg : float
        Regularization used, relative to the mean eigenvalue of the covariance.
    """

    mean: np.ndarray
    matrix: np.ndarray
    reg: float

    @property
    def dim(self) -> int:
        """Number of features ``D`` of one flattened input."""
        return int(self.mean.shape[0])

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Whiten inputs with the fitted mean and matrix.

        Parameters
        ----------
        x : np.ndarray, shape (M, *feature_shape)
            Inputs whose trailing axes flatten to ``D`` features (e.g. (M, C, H, W)).

        Returns
        -------
        np.ndarray, float32, same shape as ``x``
            ``(x - mean) @ matrix``, computed in float64 in chunks of rows.

        Raises
        ------
        DataError
            If ``x`` does not have ``D`` features per row.
        """
        x = np.asarray(x)
        if x.ndim < 2 or math.prod(x.shape[1:]) != self.dim:
            raise DataError(
                f"ZCA was fitted on inputs with {self.dim} features, but the inputs to "
                f"transform have shape {x.shape}."
            )
        flat = x.reshape(x.shape[0], self.dim)
        out = np.empty(flat.shape, dtype=np.float32)
        for start in range(0, flat.shape[0], _CHUNK_ROWS):
            chunk = flat[start : start + _CHUNK_ROWS].astype(np.float64) - self.mean
            out[start : start + _CHUNK_ROWS] = chunk @ self.matrix
        return out.reshape(x.shape)


def fit_zca(x_train: np.ndarray, reg: float) -> ZCA:
    """Fit regularized ZCA whitening on training inputs.

    Parameters
    ----------
    x_train : np.ndarray, shape (N, *feature_shape)
        Training inputs only (never test data); flattened to (N, D).
    reg : float
        Regularization ``>= 0`` relative to the mean eigenvalue:
        ``W = U diag((s + reg * trace(C) / D)^(-1/2)) U^T``. Typical values are 1e-5 .. 1e-1;
        0 requires a full-rank covariance.

    Returns
    -------
    ZCA
        Frozen transform with read-only float64 ``mean`` (D,) and ``matrix`` (D, D).

    Raises
    ------
    ConfigError
        If ``reg`` is negative or not finite.
    DataError
        If ``x_train`` is not a finite numeric array of shape (N, ...) with N >= 1, or the
        regularized covariance has a zero eigenvalue (e.g. ``reg=0`` with D >= N, or constant
        data).
    """
    if isinstance(reg, bool) or not isinstance(reg, int | float | np.floating | np.integer):
        raise ConfigError(f"ZCA reg must be a non-negative number; got {reg!r}.")
    reg = float(reg)
    if not math.isfinite(reg) or reg < 0:
        raise ConfigError(f"ZCA reg must be a non-negative finite number; got {reg}.")
    x = np.asarray(x_train)
    if x.ndim < 2 or x.shape[0] < 1 or x.dtype.kind not in "iuf":
        raise DataError(
            f"ZCA training inputs must be a numeric array of shape (N, ...) with N >= 1; got "
            f"shape {x.shape} and dtype {x.dtype}."
        )
    flat = x.reshape(x.shape[0], -1).astype(np.float64)
    if not np.all(np.isfinite(flat)):
        raise DataError("ZCA training inputs contain NaN or infinite values.")
    n, d = flat.shape
    mean = flat.mean(axis=0)
    flat -= mean
    cov = flat.T @ flat / n
    eigvals, eigvecs = np.linalg.eigh(cov)
    eigvals = np.clip(eigvals, 0.0, None)
    eps = reg * float(np.trace(cov)) / d
    denom = eigvals + eps
    # Eigenvalues below rounding level count as zero: without regularization they would blow up.
    tol = float(eigvals.max()) * d * np.finfo(np.float64).eps
    if not np.all(denom > tol):
        raise DataError(
            f"the ZCA covariance of the training inputs ({n} samples, {d} features) is singular "
            f"with reg={reg}; use reg > 0 on non-constant data."
        )
    matrix = (eigvecs * denom**-0.5) @ eigvecs.T
    matrix = (matrix + matrix.T) / 2
    mean.setflags(write=False)
    matrix.setflags(write=False)
    return ZCA(mean=mean, matrix=matrix, reg=reg)
