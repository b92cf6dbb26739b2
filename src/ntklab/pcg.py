"""Kernel ridge regression by preconditioned conjugate gradients (PCG) on a precomputed kernel.

Solves (K + μ·I) α = Y for every shift μ = λ·tr K / n of a ridge grid at once, without a
factorization of K: each iteration reads K once (from memory, or in row blocks from a memmap
of any float dtype, accumulated in float64) and multiplies it by the search directions of every
still-unconverged (ridge, output) column together, so one pass over K serves the whole grid.

Preconditioner: a rank-r Nyström approximation K̂ = F Fᵀ = U diag(ŝ) Uᵀ from block randomly
pivoted Cholesky (Chen, Epperly, Tropp & Webber 2023; r pivot rows of K and O(n r²) flops),
applied in the form of Frangella, Tropp & Udell (2023)

    P⁻¹ = (ŝ_r + μ) · U diag(1 / (ŝ + μ)) Uᵀ + (I − U Uᵀ),

so the top r directions of K are flattened to ŝ_r + μ and the rest are left alone: the
preconditioned spectrum lies in about [λ_min(K) + μ, max(ŝ_r, λ_{r+1}(K)) + μ] whatever the
ridge, which is what makes the small ridges and λ = 0 feasible.

Stopping rule and guarantee. For a test point x, the error of the prediction K(x, X)α is
bounded through the kernel's own geometry (Cauchy–Schwarz in the RKHS):

    |K(x, X)(α − α*)| ≤ √k(x, x) · ‖α − α*‖_K ≤ √k(x, x) · ‖α − α*‖_A,   A = K + μI.

PCG minimizes exactly this A-norm error, and its size is read off the iteration itself
(Hestenes–Stiefel estimate, Strakoš & Tichý 2002): ‖e_k‖²_A ≈ Σ_{j=k}^{k+d-1} α_j r_jᵀz_j.
A column stops when that estimate, with a delay of ``DELAY`` iterations, is at most
``tol · rms(y) / √(tr K / n)``, i.e. when every prediction is within about ``tol · rms(y)``
(times √(k(x, x) / mean diagonal)) of the exact one; ``tol = 1e-7`` leaves three orders of
magnitude below a 1e-4 relative agreement. The final true residual ‖Y − Aα‖ is recomputed and
must agree with the recurrence; a column that does not converge in ``maxiter`` iterations is
reported, never returned as if it had.

Why not SciPy's ``scipy.sparse.linalg.cg``: it takes one right-hand side, so every iteration of
every (ridge, output) column would read all of K again (10 outputs × 8 ridges = 80 passes per
iteration instead of one); the batched iteration here is a few lines of NumPy, and SciPy's
LAPACK does the small dense work (``eigh``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import scipy.linalg

TOL = 1e-7  # predictions within ~TOL·rms(y) of the exact solve (module docstring)
DELAY = 10  # iterations of look-ahead in the A-norm error estimate
RANK = 1000  # preconditioner rank (capped by n / 4 and the memory budget)
BLOCK = 200  # pivots per block of randomly pivoted Cholesky
MAXITER = 1000
ROW_BLOCK_BYTES = 64 * 2**20  # K is read from memmaps in row blocks of at most this many bytes


class KernelOperator:
    """K (n, n), in memory or a memmap of any float dtype, used through products in float64."""

    def __init__(self, k: np.ndarray, block_bytes: int | None = None) -> None:
        if k.ndim != 2 or k.shape[0] != k.shape[1]:
            raise ValueError(f"the kernel must be square; got shape {k.shape}")
        self.k = k
        self.n = k.shape[0]
        # an in-memory float64 array is multiplied as it is; anything else in row blocks
        self.direct = k.dtype == np.float64 and not isinstance(k, np.memmap)
        block_bytes = ROW_BLOCK_BYTES if block_bytes is None else block_bytes
        self.block_rows = max(1, int(block_bytes // (8 * max(self.n, 1))))
        self.passes = 0  # full reads of K (one per product)
        self.seconds = 0.0

    def diag(self) -> np.ndarray:
        return np.array(np.diagonal(self.k), dtype=np.float64)

    @property
    def trace(self) -> float:
        if not hasattr(self, "_trace"):
            self._trace = float(self.diag().sum())
        return self._trace

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """K[idx, :] as float64 (idx sorted for locality in a memmap)."""
        return np.array(self.k[np.asarray(idx)], dtype=np.float64)

    def matmul(self, x: np.ndarray) -> np.ndarray:
        """K @ x in float64 (x (n, c))."""
        t0 = time.perf_counter()
        self.passes += 1
        if self.direct:
            out = self.k @ x
        else:
            out = np.empty((self.n, x.shape[1]))
            for i in range(0, self.n, self.block_rows):
                sl = slice(i, min(i + self.block_rows, self.n))
                out[sl] = np.asarray(self.k[sl], dtype=np.float64) @ x
        self.seconds += time.perf_counter() - t0
        return out


def rpcholesky(op: KernelOperator, rank: int, seed: int = 0, block: int = BLOCK) -> np.ndarray:
    """F (n, r') with K ≈ F Fᵀ by block randomly pivoted Cholesky, r' ≤ ``rank``.

    Each block samples pivots with probability proportional to the residual diagonal, reads
    those rows of K, and adds the Cholesky factor of their residual (via ``eigh``, which drops
    directions that are numerically zero, so repeated or collinear pivots are harmless).
    """
    n = op.n
    rng = np.random.default_rng(seed)
    d = op.diag()
    total0 = float(d.sum())
    f = np.empty((n, rank))
    k = 0
    while k < rank:
        total = float(d.sum())
        if total <= 1e-14 * total0 or not math.isfinite(total):
            break
        s = np.unique(rng.choice(n, size=min(block, rank - k), p=np.maximum(d, 0) / total))
        g = op.rows(s).T  # K[:, s] by symmetry
        g -= f[:, :k] @ f[s, :k].T
        h = g[s]
        w, q = scipy.linalg.eigh((h + h.T) / 2, check_finite=False)
        keep = w > 1e-12 * max(float(w.max()), 0.0) if w.size else w > 0
        if not keep.any():
            break
        w, q = w[keep][::-1], q[:, keep][:, ::-1]
        m = min(len(w), rank - k)
        f[:, k : k + m] = g @ (q[:, :m] / np.sqrt(w[:m]))
        d -= (f[:, k : k + m] ** 2).sum(1)
        np.maximum(d, 0, out=d)
        d[s] = 0.0  # pivots are interpolated exactly
        k += m
    return f[:, :k]


@dataclass
class Nystrom:
    """K̂ = U diag(s) Uᵀ (U orthonormal, s descending) and the preconditioner built on it."""

    u: np.ndarray
    s: np.ndarray

    @classmethod
    def from_factor(cls, f: np.ndarray) -> Nystrom:
        # F = U Σ Vᵀ through the small Gram matrix FᵀF = V Σ² Vᵀ
        w, v = scipy.linalg.eigh(f.T @ f, check_finite=False)
        w, v = w[::-1], v[:, ::-1]
        keep = w > 1e-12 * max(float(w[0]), 0.0) if w.size else w > 0
        w, v = w[keep], v[:, keep]
        return cls(f @ (v / np.sqrt(w)), w)

    @property
    def rank(self) -> int:
        return len(self.s)

    def apply_inverse(self, r: np.ndarray, mu: np.ndarray) -> np.ndarray:
        """P⁻¹ r column by column, column j with shift ``mu[j]``."""
        if self.rank == 0:
            return r.copy()
        floor = self.s[-1]
        coef = (floor + mu[None, :]) / (self.s[:, None] + mu[None, :]) - 1.0
        return r + self.u @ (coef * (self.u.T @ r))

    def solve(self, y: np.ndarray, mu: np.ndarray) -> np.ndarray:
        """(K̂ + μI)⁻¹ y restricted to range(U): the low-rank approximate solution."""
        if self.rank == 0:
            return np.zeros_like(y)
        return self.u @ ((self.u.T @ y) / (self.s[:, None] + mu[None, :]))


@dataclass
class PCGResult:
    x: np.ndarray  # (n, c) solutions
    converged: np.ndarray  # (c,) bool: stopping rule met and the true residual check passed
    iterations: np.ndarray  # (c,) iterations each column ran
    error_estimate: np.ndarray  # (c,) A-norm error estimate at the stop
    residual: np.ndarray  # (c,) true relative residual ‖y − A x‖ / ‖y‖ at the end


def pcg(
    op: KernelOperator,
    y: np.ndarray,
    mu: np.ndarray,
    precond: Nystrom,
    tol_abs: np.ndarray,
    maxiter: int = MAXITER,
    x0: np.ndarray | None = None,
    delay: int = DELAY,
) -> PCGResult:
    """Batched PCG on (K + mu[j]·I) x_j = y_j for every column j of ``y`` (n, c).

    Column j stops when its A-norm error estimate (delay ``delay``) is at most ``tol_abs[j]``;
    its true residual is then checked against the bound that this implies,
    ‖y_j − A x_j‖ ≤ √(‖A‖)·tol_abs[j] with ‖A‖ ≤ tr K + mu[j].
    """
    n, c = y.shape
    mu = np.asarray(mu, dtype=np.float64)
    x = np.zeros((n, c)) if x0 is None else np.array(x0, dtype=np.float64)
    r = y - (op.matmul(x) + mu * x) if x0 is not None and np.any(x0) else y.copy()
    z = precond.apply_inverse(r, mu)
    p = z.copy()
    rho = np.einsum("ij,ij->j", r, z)
    terms = np.zeros((delay, c))  # the last `delay` values of α_j·ρ_j per column
    its = np.zeros(c, dtype=np.int64)
    est = np.full(c, np.inf)
    done = ~np.any(r, axis=0)  # y_j = A x0_j exactly (e.g. y_j = 0)
    est[done] = 0.0
    active = ~done
    for it in range(maxiter):
        a = np.flatnonzero(active)
        if len(a) == 0:
            break
        pa = p[:, a]
        q = op.matmul(pa) + mu[a] * pa
        pq = np.einsum("ij,ij->j", pa, q)
        bad = ~(pq > 0)  # breakdown: A not numerically positive definite along p (or NaN)
        alpha = np.where(bad, 0.0, rho[a] / np.where(bad, 1.0, pq))
        x[:, a] += alpha * pa
        r[:, a] -= alpha * q
        terms[it % delay, a] = alpha * rho[a]
        its[a] += 1
        active[a[bad]] = False
        if it + 1 >= delay:
            # ‖e_{k}‖²_A ≈ Σ_{j=k}^{k+delay-1} α_j ρ_j for k = it + 1 − delay; x now is no worse
            est[a] = np.sqrt(np.abs(terms[:, a].sum(0)))
            fin = (est[a] <= tol_abs[a]) & ~bad
            done[a[fin]] = True
            active[a[fin]] = False
        a = np.flatnonzero(active)
        if len(a) == 0:
            break
        za = precond.apply_inverse(r[:, a], mu[a])
        rho_new = np.einsum("ij,ij->j", r[:, a], za)
        p[:, a] = za + (rho_new / rho[a]) * p[:, a]
        rho[a] = rho_new
    true_r = y - (op.matmul(x) + mu * x)
    ynorm = np.linalg.norm(y, axis=0)
    rnorm = np.linalg.norm(true_r, axis=0)
    bound = np.sqrt(op.trace + mu) * tol_abs
    ok = done & (rnorm <= np.maximum(bound, 1e-300))
    return PCGResult(x, ok, its, est, rnorm / np.where(ynorm > 0, ynorm, 1.0))


def preconditioner_rank(n: int, columns: int, budget_bytes: float, rank: int = RANK) -> int:
    """Rank r within the memory budget: F and U (2·8·n·r bytes) next to the PCG work arrays
    (six of n × columns float64) and one row block of K."""
    free = budget_bytes - 6 * 8 * n * columns - ROW_BLOCK_BYTES
    return int(max(0, min(rank, n // 4, free // (16 * n))))
