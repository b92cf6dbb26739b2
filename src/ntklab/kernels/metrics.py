"""Kernel comparisons (docs/design.md definitions), float64, on (n, n) kernel matrices.

* distance (Fort et al. 2020): S(K₁, K₂) = 1 − ⟨K₁, K₂⟩_F / (‖K₁‖_F ‖K₂‖_F)
* angle: θ(K₁, K₂) = arccos(1 − S) ∈ [0, π], the angle between K₁ and K₂ as vectors of the
  Frobenius space (first order in a small change, where S ≈ θ²/2 is second order)
* centered kernel–target alignment: ⟨K_c, (Y Yᵀ)_c⟩_F / (‖K_c‖_F ‖(Y Yᵀ)_c‖_F), A_c = H A H,
  H = I − 11ᵀ/n
* relative Frobenius error ‖K₁ − K₂‖_F / ‖K₂‖_F (eNTK vs infinite NTK)
* spectrum: top eigenvalues and the effective rank (Σλ)² / Σλ² (participation ratio)
"""

from __future__ import annotations

import numpy as np
import scipy.linalg


def _f64(k: np.ndarray) -> np.ndarray:
    return np.asarray(k, dtype=np.float64)


def kernel_distance(k1: np.ndarray, k2: np.ndarray) -> float:
    """S(K₁, K₂) ∈ [0, 1] for PSD kernels; 0 iff K₂ = c·K₁ with c > 0."""
    a, b = _f64(k1), _f64(k2)
    return float(1.0 - np.vdot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def kernel_angle(k1: np.ndarray, k2: np.ndarray) -> float:
    """θ(K₁, K₂) = arccos(⟨K₁, K₂⟩_F / (‖K₁‖_F ‖K₂‖_F)) in radians.

    Computed as 2·atan2(‖a − b‖, ‖a + b‖) with a, b the unit-norm kernels, which is exact to
    rounding for small angles too (arccos loses half the digits near 0).
    """
    a, b = _f64(k1), _f64(k2)
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    return float(2.0 * np.arctan2(np.linalg.norm(a - b), np.linalg.norm(a + b)))


def center(k: np.ndarray) -> np.ndarray:
    """H K H with H = I − 11ᵀ/n (K (n, n))."""
    k = _f64(k)
    return k - k.mean(0, keepdims=True) - k.mean(1, keepdims=True) + k.mean()


def alignment(k: np.ndarray, y: np.ndarray) -> float:
    """Centered kernel–target alignment of K (n, n) with targets Y (n, C) (or (n,))."""
    y = _f64(y).reshape(len(y), -1)
    kc, yc = center(k), center(y @ y.T)
    return float(np.vdot(kc, yc) / (np.linalg.norm(kc) * np.linalg.norm(yc)))


def relative_error(k: np.ndarray, ref: np.ndarray) -> float:
    """‖K − K_ref‖_F / ‖K_ref‖_F."""
    return float(np.linalg.norm(_f64(k) - _f64(ref)) / np.linalg.norm(_f64(ref)))


def spectrum(k: np.ndarray, top: int = 10) -> tuple[np.ndarray, float]:
    """(top eigenvalues, descending; effective rank (Σλ)²/Σλ² over the non-negative ones)."""
    lam = scipy.linalg.eigvalsh(_f64(k))[::-1]
    pos = np.clip(lam, 0, None)
    return lam[:top].copy(), float(pos.sum() ** 2 / max((pos**2).sum(), 1e-300))
