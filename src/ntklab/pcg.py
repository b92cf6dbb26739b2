"""Kernel ridge regression by preconditioned conjugate gradients (PCG) on a precomputed kernel.

Solves (K + μ·I) α = Y for every shift μ = λ·tr K / n of a ridge grid at once, without a
factorization of K: each iteration reads K once (from memory, or in row blocks from a memmap
of any float dtype, accumulated in float64) and multiplies it by the search directions of every
still-unconverged (ridge, output) column together, so one pass over K serves the whole grid. A
kernel file whose float64 copy takes at most half the memory budget is read into memory once
(:func:`holds_kernel`): converting a float32 file's row blocks at every pass cost more than the
product itself (2.6–2.9 s against 1.2–1.3 s a pass at n = 16,384 with 30 columns, 2 cores).

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
(times √(k(x, x) / mean diagonal)) of the exact one. With ``tol = 1e-6`` that bound stays 20
times below a 1e-4 relative agreement even where the predictions shrink to a fifth of the
targets (large ridges); measured differences are far smaller still (about 1e-9 at n = 2048 and
8192: the bound is Cauchy–Schwarz, and the iterate returned is ``DELAY`` steps past the one
estimated). The true residual ‖y − A x‖ is checked once a shift's columns stop (in the same
pass over K as the next iteration) against the bound the stopping rule implies,
‖y − A x‖ ≤ √‖A‖ · ‖e‖_A ≤ √(tr K + μ) · (the allowed error); a shift that fails it, or does
not stop within ``maxiter`` iterations, is reported as stalled, never returned as if it had
converged (the estimate is a lower bound and can be fooled, e.g. by a singular K and a tiny
shift: the check catches it). Every column runs at least ``DELAY`` iterations.

Kernels that are positive semi-definite only up to rounding (see :mod:`ntklab.regress`): a
column with pᵀAp ≤ 0 proves K + μI indefinite (the signs of the α_j are the inertia of the
preconditioned Lanczos matrix, congruent to A). Each ridge then climbs the dense path's jitter
ladder (:func:`solve_chains`): a shift proven indefinite disposes of every smaller shift of every
ridge, equal shifts are solved once, and new shifts join the running batch as soon as they are
needed, so the whole grid costs about as many passes over K as its slowest ridge.

Why not SciPy's ``scipy.sparse.linalg.cg``: it takes one right-hand side, so every iteration of
every (ridge, output) column would read all of K again (10 outputs × 8 ridges = 80 passes per
iteration instead of one); the batched iteration here is a few lines of NumPy, and SciPy's
LAPACK does the small dense work (``eigh``).
"""

from __future__ import annotations

import math
import mmap
from dataclasses import dataclass

import numpy as np
import scipy.linalg

TOL = 1e-6  # predictions within ~TOL·rms(y) of the exact solve (module docstring)
DELAY = 10  # iterations of look-ahead in the A-norm error estimate
RANK = 2000  # preconditioner rank (capped by n / 4 and the memory budget)
BLOCK = 200  # pivots per block of randomly pivoted Cholesky
MAXITER = 1000
ROW_BLOCK_BYTES = 64 * 2**20  # K is read from memmaps in row blocks of at most this many bytes


def release(a: np.ndarray) -> None:
    """Drop the pages of a memory-mapped ``a`` (or of the map it views) from this process's
    resident memory; the OS keeps them cached, so reading them again is cheap. Without it a
    pass over a kernel file larger than memory counts all of it in the process's RSS."""
    m = getattr(a, "_mmap", None)
    if m is not None and hasattr(mmap, "MADV_DONTNEED"):
        m.madvise(mmap.MADV_DONTNEED)


class KernelOperator:
    """K (n, n), in memory or a memmap of any float dtype, used through products in float64."""

    def __init__(self, k: np.ndarray, block_bytes: int | None = None, in_memory: bool = False) -> None:
        """``in_memory``: read a memmap or non-float64 K once into a float64 array (8·n² bytes)
        and multiply that, instead of reading and converting K's row blocks at every pass
        (about 55 % of a pass over a float32 file at n = 16,384)."""
        if k.ndim != 2 or k.shape[0] != k.shape[1]:
            raise ValueError(f"the kernel must be square; got shape {k.shape}")
        self.n = k.shape[0]
        block_bytes = ROW_BLOCK_BYTES if block_bytes is None else block_bytes
        self.block_rows = max(1, int(block_bytes // (8 * max(self.n, 1))))
        # an in-memory float64 array is multiplied as it is; anything else in row blocks
        self.direct = k.dtype == np.float64 and not isinstance(k, np.memmap)
        if in_memory and not self.direct:
            k64 = np.empty(k.shape, dtype=np.float64)
            for i in range(0, self.n, self.block_rows):
                k64[i : i + self.block_rows] = k[i : i + self.block_rows]
                release(k)
            k, self.direct = k64, True
        self.k = k
        self.passes = 0  # full reads of K (one per product)

    def diag(self) -> np.ndarray:
        return np.array(np.diagonal(self.k), dtype=np.float64)

    @property
    def trace(self) -> float:
        if not hasattr(self, "_trace"):
            self._trace = float(self.diag().sum())
        return self._trace

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """K[idx, :] as float64 (idx sorted for locality in a memmap)."""
        out = np.array(self.k[np.asarray(idx)], dtype=np.float64)
        release(self.k)
        return out

    def matmul(self, x: np.ndarray) -> np.ndarray:
        """K @ x in float64 (x (n, c))."""
        self.passes += 1
        if self.direct:
            out = self.k @ x
        else:
            out = np.empty((self.n, x.shape[1]))
            for i in range(0, self.n, self.block_rows):
                sl = slice(i, min(i + self.block_rows, self.n))
                out[sl] = np.asarray(self.k[sl], dtype=np.float64) @ x
                release(self.k)
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
        if f.shape[1] == 0:
            return cls(np.zeros((f.shape[0], 0)), np.zeros(0))
        # F = U Σ Vᵀ through the small Gram matrix FᵀF = V Σ² Vᵀ
        w, v = scipy.linalg.eigh(f.T @ f, driver="evd", check_finite=False)
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


ACTIVE, CONVERGED, INDEFINITE, STALLED, CANCELLED = range(5)


class BatchedPCG:
    """PCG on (K + μ_j I) x_j = y_j for a set of columns that may grow while it runs.

    Every :meth:`step` multiplies K once by the search directions of all active columns. A
    column stops as ``CONVERGED`` when its A-norm error estimate (``delay`` iterations of
    look-ahead) is at most its ``tol``, ``INDEFINITE`` when pᵀAp ≤ 0 (a proof that K + μI is
    not positive definite: P is, so the signs of the α_j are the inertia of the Lanczos matrix
    of P^-½ A P^-½, which is congruent to A), ``STALLED`` after ``maxiter`` iterations.
    """

    def __init__(self, op: KernelOperator, precond: Nystrom, maxiter: int = MAXITER, delay: int = DELAY):
        self.op, self.precond, self.maxiter, self.delay = op, precond, int(maxiter), int(delay)
        n = op.n
        self.y, self.x, self.r, self.p = (np.zeros((n, 0)) for _ in range(4))
        self.mu, self.rho, self.tol, self.est = (np.zeros(0) for _ in range(4))
        self.terms = np.zeros((self.delay, 0))
        self.its = np.zeros(0, dtype=np.int64)
        self.state = np.zeros(0, dtype=np.int8)

    def add(self, y: np.ndarray, mu: np.ndarray, tol: np.ndarray) -> np.ndarray:
        """Start columns y (n, c) with shifts ``mu`` and A-norm error tolerances ``tol``; their ids."""
        y = np.asarray(y, dtype=np.float64)
        mu = np.asarray(mu, dtype=np.float64)
        z = self.precond.apply_inverse(y, mu)
        c = y.shape[1]
        ids = np.arange(len(self.state), len(self.state) + c)
        self.y = np.concatenate([self.y, y], axis=1)
        self.x = np.concatenate([self.x, np.zeros_like(y)], axis=1)
        self.r = np.concatenate([self.r, y], axis=1)
        self.p = np.concatenate([self.p, z], axis=1)
        self.mu = np.concatenate([self.mu, mu])
        self.rho = np.concatenate([self.rho, np.einsum("ij,ij->j", y, z)])
        self.tol = np.concatenate([self.tol, np.asarray(tol, dtype=np.float64)])
        self.est = np.concatenate([self.est, np.full(c, np.inf)])
        self.terms = np.concatenate([self.terms, np.zeros((self.delay, c))], axis=1)
        self.its = np.concatenate([self.its, np.zeros(c, dtype=np.int64)])
        zero = ~np.any(y, axis=0)  # y_j = 0: x_j = 0 exactly
        self.state = np.concatenate([self.state, np.where(zero, CONVERGED, ACTIVE).astype(np.int8)])
        self.est[ids[zero]] = 0.0
        return ids

    def cancel(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids)
        self.state[ids[self.state[ids] == ACTIVE]] = CANCELLED

    @property
    def running(self) -> bool:
        return bool(np.any(self.state == ACTIVE))

    def step(self, check: np.ndarray | None = None) -> np.ndarray:
        """One iteration of every active column; with ``check``, the same pass over K also gives
        the true residual norms ‖y − A x‖ of those columns (returned)."""
        a = np.flatnonzero(self.state == ACTIVE)
        check = np.zeros(0, dtype=np.int64) if check is None else np.asarray(check, dtype=np.int64)
        if len(a) == 0:
            return self.residuals(check)
        pa, mu = self.p[:, a], self.mu[a]
        xc = self.x[:, check]
        kk = self.op.matmul(np.concatenate([pa, xc], axis=1) if len(check) else pa)
        rnorm = np.linalg.norm(self.y[:, check] - (kk[:, len(a) :] + self.mu[check] * xc), axis=0)
        q = kk[:, : len(a)] + mu * pa
        pq = np.einsum("ij,ij->j", pa, q)
        bad = ~(pq > 0)  # pᵀAp ≤ 0, or NaN
        alpha = np.where(bad, 0.0, self.rho[a] / np.where(bad, 1.0, pq))
        self.x[:, a] += alpha * pa
        ra = self.r[:, a] - alpha * q
        self.r[:, a] = ra
        its = self.its[a]
        self.terms[its % self.delay, a] = alpha * self.rho[a]
        self.its[a] = its + 1
        state = np.full(len(a), ACTIVE, dtype=np.int8)
        ready = its + 1 >= self.delay
        # ‖e_k‖²_A ≈ Σ_{j=k}^{k+delay-1} α_j ρ_j for k = its + 1 − delay; x now is no worse
        est = np.sqrt(np.abs(self.terms[:, a].sum(0)))
        self.est[a[ready]] = est[ready]
        state[ready & (est <= self.tol[a])] = CONVERGED
        state[(self.its[a] >= self.maxiter) & (state == ACTIVE)] = STALLED
        state[bad] = INDEFINITE
        self.state[a] = state
        go = state == ACTIVE
        if go.any():
            b, ra = a[go], ra[:, go]
            z = self.precond.apply_inverse(ra, self.mu[b])
            rho_new = np.einsum("ij,ij->j", ra, z)
            self.p[:, b] = z + (rho_new / self.rho[b]) * self.p[:, b]
            self.rho[b] = rho_new
        return rnorm

    def residuals(self, ids: np.ndarray) -> np.ndarray:
        """True ‖y − (K + μI) x‖ of columns ``ids`` (one pass over K)."""
        ids = np.asarray(ids)
        if len(ids) == 0:
            return np.zeros(0)
        x = self.x[:, ids]
        return np.linalg.norm(self.y[:, ids] - (self.op.matmul(x) + self.mu[ids] * x), axis=0)


@dataclass
class ChainResult:
    """How one ridge's chain of shifts ended (see :func:`solve_chains`)."""

    status: str  # "converged", "stalled" (no convergence at `shift`), "indefinite" (none PD)
    shift: float | None  # the shift of the solution (or of the stall)
    x: np.ndarray | None  # (n, c) solution, or the unconverged iterate of a stall
    iterations: int  # iterations of this chain's columns, summed over the shifts it tried
    residual: float  # true relative residual ‖y − A x‖ / ‖y‖ (largest over the columns)
    climbed_on_stall: bool = False  # a shift was passed over because PCG stalled on it


def solve_chains(
    op: KernelOperator,
    precond: Nystrom,
    y: np.ndarray,
    chains: list[list[float]],
    tol: np.ndarray,
    maxiter: int = MAXITER,
    climb_on_stall: list[int | None] | None = None,
) -> list[ChainResult]:
    """For every chain of increasing shifts μ_0 < μ_1 < ..., solve (K + μ_k I) X = y at the first
    μ_k for which K + μ_k I is positive definite; all chains in one :class:`BatchedPCG`.

    A shift proven indefinite (pᵀAp ≤ 0) also disposes of every smaller shift of every chain
    (K + μI is then indefinite too), and equal shifts of different chains are solved once. Once a
    chain has climbed, its next shift is started alongside (speculatively) unless a smaller
    shift has already converged. ``climb_on_stall[i] = k``: from its k-th shift on, chain i
    passes over a shift whose PCG stalls instead of ending there (None: never). A shift whose
    columns have stopped is checked (one pass for all shifts that stop together): every column
    must have ‖y − A x‖ ≤ √(tr K + μ)·tol, the bound its stopping rule implies, else the shift
    counts as stalled.
    """
    y = np.asarray(y, dtype=np.float64)
    c = y.shape[1]
    climb_on_stall = climb_on_stall or [None] * len(chains)
    solver = BatchedPCG(op, precond, maxiter)
    groups: dict[float, np.ndarray] = {}
    lower = -np.inf  # the largest shift proven indefinite
    pos = [0] * len(chains)
    iters = [0] * len(chains)
    counted: list[set[float]] = [set() for _ in chains]
    climbed = [False] * len(chains)
    results: list[ChainResult | None] = [None] * len(chains)

    def launch(shift: float) -> np.ndarray:
        if shift not in groups:
            groups[shift] = solver.add(y, np.full(c, shift), tol)
        return groups[shift]

    def status(shift: float) -> int:
        st = solver.state[groups[shift]]
        if np.any(st == INDEFINITE):
            return INDEFINITE
        if np.any(st == ACTIVE):
            return ACTIVE
        if np.any(st == STALLED) or np.any(st == CANCELLED):
            return STALLED
        return CONVERGED

    def count(i: int, shift: float) -> None:
        if shift not in counted[i]:
            counted[i].add(shift)
            iters[i] += int(solver.its[groups[shift]].max())

    residual: dict[float, float] = {}  # relative true residual of each settled shift
    ynorm = np.maximum(np.linalg.norm(y, axis=0), 1e-300)

    def step() -> None:
        """One PCG step; shifts whose columns all stopped get their true residual checked in the
        same pass over K: ‖y − A x‖ ≤ √(tr K + μ)·tol, else the shift counts as stalled."""
        new = [
            s
            for s, ids in groups.items()
            if s not in residual and np.all(np.isin(solver.state[ids], (CONVERGED, STALLED)))
        ]
        ids = np.concatenate([groups[s] for s in new]) if new else None
        if ids is None and not solver.running:
            raise RuntimeError("solve_chains: no column is running and no result is pending")
        rnorm = solver.step(ids)
        for k, s in enumerate(new):
            rn = rnorm[k * c : (k + 1) * c]
            residual[s] = float((rn / ynorm).max())
            if np.any(rn > np.sqrt(op.trace + s) * tol):
                solver.state[groups[s]] = STALLED

    while True:
        for i, chain in enumerate(chains):
            while results[i] is None:
                while pos[i] < len(chain) and chain[pos[i]] <= lower:
                    if chain[pos[i]] in groups:
                        count(i, chain[pos[i]])
                    pos[i] += 1
                if pos[i] == len(chain):
                    results[i] = ChainResult("indefinite", chain[-1], None, iters[i], np.inf)
                    break
                shift = chain[pos[i]]
                launch(shift)
                st = status(shift)
                if st in (CONVERGED, STALLED) and shift not in residual:
                    break  # checked in the next step
                if st == INDEFINITE:
                    lower = max(lower, shift)
                    continue
                if st == CONVERGED:
                    count(i, shift)
                    x = solver.x[:, groups[shift]]
                    results[i] = ChainResult("converged", shift, x, iters[i], residual[shift], climbed[i])
                elif st == STALLED:
                    count(i, shift)
                    k = climb_on_stall[i]
                    if k is not None and pos[i] >= k and pos[i] + 1 < len(chain):
                        pos[i] += 1
                        climbed[i] = True
                        continue
                    x = solver.x[:, groups[shift]]
                    results[i] = ChainResult("stalled", shift, x, iters[i], residual[shift], climbed[i])
                elif pos[i] > 0 and pos[i] + 1 < len(chain):  # running, after a climb
                    if not any(s <= shift and status(s) == CONVERGED for s in groups):
                        launch(chain[pos[i] + 1])
                break
        for shift, ids in groups.items():
            if shift <= lower:
                solver.cancel(ids)
        if all(r is not None for r in results):
            break
        step()
    return [r for r in results if r is not None]


def holds_kernel(n: int, budget_bytes: float) -> bool:
    """Whether the solver keeps K in memory as float64 (:class:`KernelOperator` ``in_memory``):
    when its 8·n² bytes take at most half the memory budget, leaving the rest to the
    preconditioner and the work arrays."""
    return 8 * n * n <= budget_bytes / 2


def preconditioner_rank(n: int, columns: int, budget_bytes: float, rank: int = RANK) -> int:
    """Rank r within the memory budget: F and U (2·8·n·r bytes) next to the PCG work arrays
    (six of n × columns float64) and one row block of K (K itself, 8·n² bytes, where
    :func:`holds_kernel`)."""
    if holds_kernel(n, budget_bytes):
        budget_bytes -= 8 * n * n
    free = budget_bytes - 6 * 8 * n * columns - ROW_BLOCK_BYTES
    return int(max(0, min(rank, n // 4, free // (16 * n))))
