"""Kernel ridge regression in float64 on a precomputed kernel.

f̂(x) = K(x, X) (K(X, X) + λ·(tr K / n)·I)⁻¹ Y   (docs/design.md)

Three solvers serve a grid of ridges λ:

A kernel computed in floating point (an eNTK from float32 Jacobians, say) is positive
semi-definite only up to its rounding: the default cnn1d's eNTK on 8,192 MNIST-1D points has
328 eigenvalues below zero, down to −7e-6·tr K / n. A shift below that makes the solve
meaningless, so every λ' that leaves K + λ'I not positive definite is raised to a jitter:

* ``eigh``: K = V diag(s) Vᵀ once (≈ 10·n³ flops here), then every λ costs a product:
  f̂ = K(x, X) V diag(1 / (s + λ')) Vᵀ Y with λ' = λ·tr K / n, raised to at least the
  smallest jitter that makes the solve well-posed, ``max(0, n·ε·max(s) − min(s))``.
* ``cholesky``: one factorization per λ (n³/3 flops each), cheaper for short ridge grids.
  λ' is used if K + λ'I factorizes, else the smallest value above λ' of the jitter ladder
  n·ε·(tr K / n)·100^k, k = 0, 1, ..., that does (ridgeless: λ' = 0 first). Shifts that
  failed are remembered, and equal shifts are solved once.
* ``iterative``: preconditioned conjugate gradients (:mod:`ntklab.pcg`): every ridge of the
  grid in one batched iteration that reads K once per step, in row blocks when K is a memmap
  (any float dtype, accumulated in float64), with a rank-r Nyström preconditioner from
  randomly pivoted Cholesky; the only n×n copy it makes is a float64 one of a memmap or
  float32 K whose 8·n² bytes take at most half the memory budget
  (:func:`ntklab.pcg.holds_kernel`). Predictions agree with the exact solve to about
  ``tol``·rms(y) (the stopping rule in :mod:`ntklab.pcg`). The shifts follow the
  ``cholesky`` rule, with PCG's own proof of indefiniteness (pᵀAp ≤ 0) in place of a failed
  factorization. A ridge that does not converge in ``maxiter`` iterations is said so (a
  warning) and solved densely if the dense solve fits the memory budget; otherwise λ = 0 (and
  a λ already raised to a jitter) climbs the ladder until PCG converges, and another λ gets
  NaN predictions, which :meth:`KernelRegressor.select` skips.

Choosing λ on validation data (:meth:`KernelRegressor.select`) takes one of two searches:

* ``grid``: solve every λ of the grid and keep the best (the dense solvers, always).
* ``descending``: solve the grid from the largest λ down and stop at the first λ whose
  validation loss is larger than the best so far (``PATIENCE``). It picks the same λ as
  ``grid`` whenever the validation loss, read from the largest λ down, falls and then rises
  (one minimum), and it skips the small ridges that cost PCG most of its iterations: on the
  eNTK of an MLP on 16,000 MNIST-1D points λ = 1e-4 took 406 iterations against 39 for the
  chosen λ = 0.1, and λ ≤ 1e-5 would not have converged in 1000. ``auto`` (the default) uses
  it with the iterative solver. The ridges are solved in batches (:meth:`_next_batch`): the
  first ``FIRST`` together, then one at a time, or all the rest together once PCG's iterations
  stop growing as λ shrinks (on the infinite NTK every λ ≤ 1e-2 took 50 to 55).

``auto`` picks ``iterative`` when the dense solve's memory (8·n² bytes for a float64 copy of K
and as much for the factor; three times for ``eigh``) exceeds ``memory_budget_mb``, or when n
is at least ``ITERATIVE_MIN_N``, where PCG was measured faster (benchmarks/krr_solvers.py);
else the cheaper dense solver for the number of ridges. The jitter used is ``jitter_``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence

import numpy as np
import scipy.linalg

from ntklab import pcg

EIGH_COST = 30.0  # eigh costs about this many Cholesky factorizations (measured on 2 cores)
DEFAULT_BUDGET_MB = 2048  # kernel.memory_budget_mb's default
# From here ``auto`` takes PCG even when the dense solve fits the budget (with the default 2048
# MB it stops fitting at n = 11,586). Measured on the 8-ridge grid, one BLAS thread, seconds
# iterative / dense (benchmarks/krr_solvers.py): infinite NTK of an MLP 6.9 / 6.4 at n = 4096,
# 28 / 42 at 8192, 103 / 331 at 16384; the default cnn1d's eNTK 25 / 6.4 at 4096, 106 / 62 at
# 8192 (a ridge 3e-6·tr K/n above its rounding floor takes 400 iterations), 144 / >= 345 at
# 16384 (92 / >= 276 at 100 GFLOP/s fp32, 39 fp64). PCG costs ~n² per pass against n³ for a
# factorization, so it only gains from here.
ITERATIVE_MIN_N = 16384
SOLVERS = ("auto", "eigh", "cholesky", "iterative")
SEARCHES = ("auto", "grid", "descending")
PATIENCE = 1  # the descending search stops after this many ridges in a row worse than the best
FIRST = 3  # ridges the descending search solves in its first batch
SATURATED = 1.25  # iteration growth below which it solves all remaining ridges in one batch


def dense_bytes(n: int, solver: str = "cholesky") -> int:
    """Memory of a dense solve: K in float64 and its factor (and eigenvectors for ``eigh``)."""
    return 8 * n * n * (3 if solver == "eigh" else 2)


class KernelRegressor:
    """Kernel ridge regression on a precomputed kernel.

    Parameters
    ----------
    ridges : sequence of float
        Candidate λ (relative to tr K / n); :meth:`select` picks one on validation data.
    solver : {"auto", "eigh", "cholesky", "iterative"}
    search : {"auto", "grid", "descending"}
        How :meth:`select` searches ``ridges`` (module docstring); ``auto``: ``descending`` with
        the iterative solver, else ``grid``.
    memory_budget_mb : int, optional
        Memory for the solve (``kernel.memory_budget_mb``; default 2048): decides ``auto`` and
        whether an unconverged iterative solve may fall back to the dense one.
    tol, rank, maxiter, seed :
        The iterative solver's tolerance (predictions within about ``tol``·rms(y) of the exact
        ones), preconditioner rank (default: ``pcg.RANK`` capped by n/4 and the budget),
        iteration cap and pivot-sampling seed.

    Attributes
    ----------
    solver_ : str, the solver used (``auto`` resolved by :meth:`fit`)
    scale_ : float, tr K / n
    jitter_ : float, the shift added for λ = 0 (0 when K is well conditioned)
    shifts_ : dict λ -> the shift λ' (or jitter) its solve used, for the ridges solved so far
    ridge_ : float, the λ chosen by :meth:`select` (else the first)
    eigvals_ (n,), eigvecs_ (n, n) : float64, with the ``eigh`` solver
    iterations_, residuals_ : dict λ -> PCG iterations and true relative residual ‖Y − Aα‖/‖Y‖
        (the largest over outputs), with the ``iterative`` solver
    info_ : dict, the iterative solve's preconditioner rank and timings
    """

    def __init__(
        self,
        ridges: Sequence[float] = (0.0,),
        solver: str = "auto",
        memory_budget_mb: float | None = None,
        *,
        search: str = "auto",
        tol: float = pcg.TOL,
        rank: int | None = None,
        maxiter: int = pcg.MAXITER,
        seed: int = 0,
    ) -> None:
        self.ridges = tuple(float(r) for r in ridges)
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(map(repr, SOLVERS))}; got {solver!r}")
        self.solver = solver
        if search not in SEARCHES:
            raise ValueError(f"search must be one of {', '.join(map(repr, SEARCHES))}; got {search!r}")
        self.search = search
        self.budget_bytes = float(memory_budget_mb or DEFAULT_BUDGET_MB) * 2**20
        self.tol, self.rank, self.maxiter, self.seed = float(tol), rank, int(maxiter), int(seed)

    def choose(self, n: int) -> str:
        """The solver :meth:`fit` uses for n training points."""
        if self.solver != "auto":
            return self.solver
        dense = "eigh" if len(self.ridges) > EIGH_COST else "cholesky"
        if dense_bytes(n, dense) > self.budget_bytes or n >= ITERATIVE_MIN_N:
            return "iterative"
        return dense

    def fit(self, k_train: np.ndarray, y: np.ndarray) -> KernelRegressor:
        """Prepare the solve for K(X, X) (n, n) and targets ``y`` (n, K). K is not modified.

        K may be a memmap; the iterative solver reads it in row blocks, or once into float64
        memory where that fits half the memory budget.
        """
        if not isinstance(k_train, np.ndarray):
            k_train = np.asarray(k_train, dtype=np.float64)
        n = k_train.shape[0]
        self.n_ = n
        self.solver_ = self.choose(n)
        self.search_ = self.search
        if len(set(self.ridges)) == 1:
            self.search_ = "grid"  # one ridge: nothing to search
        elif self.search == "auto":
            self.search_ = "descending" if self.solver_ == "iterative" else "grid"
        self.y_ = np.asarray(y, dtype=np.float64)
        self.jitter_ = 0.0
        self.shifts_: dict[float, float] = {}
        self._duals: dict[float, np.ndarray] = {}
        self._by_shift: dict[float, np.ndarray] = {}
        self._not_pd = -np.inf  # the largest shift that left K + shift·I not positive definite
        self.ridge_ = self.ridges[0]
        self._k_in = k_train
        if self.solver_ == "iterative":
            self._fit_iterative()
            return self
        self.k_ = np.asarray(k_train, dtype=np.float64)
        pcg.release(k_train)
        self.scale_ = float(np.trace(self.k_)) / n
        if self.solver_ == "eigh":
            s, v = scipy.linalg.eigh(self.k_, driver="evr")
            self.eigvals_, self.eigvecs_ = s, v
            self.vty_ = v.T @ self.y_
            self.jitter_ = max(0.0, n * np.finfo(np.float64).eps * max(s.max(), 0.0) - s.min())
        return self

    def _shift(self, ridge: float) -> float:
        return max(ridge * self.scale_, self.jitter_)

    def _chain(self, ridge: float) -> list[float]:
        """λ' then the jitter ladder above it: the shifts the ``cholesky`` rule tries in turn."""
        shift = ridge * self.scale_
        base = self.n_ * np.finfo(np.float64).eps * max(self.scale_, 1e-300)
        return [shift] + [base * 100.0**k for k in range(0, 9) if base * 100.0**k > shift]

    def dual(self, ridge: float) -> np.ndarray:
        """Dual coefficients (n, K) = (K + λ'I)⁻¹ Y, cached per λ."""
        if ridge in self._duals:
            return self._duals[ridge]
        if self.solver_ == "iterative":
            self._solve_iterative([ridge])
            return self._duals[ridge]
        if self.solver_ == "eigh":
            self.shifts_[ridge] = self._shift(ridge)
            d = self.eigvecs_ @ (self.vty_ / (self.eigvals_ + self._shift(ridge))[:, None])
        else:
            d = self._cholesky_solve(ridge)
        self._duals[ridge] = d
        return d

    def _cholesky_solve(self, ridge: float) -> np.ndarray:
        n = len(self.k_)
        for shift in self._chain(ridge):
            if shift <= self._not_pd:
                continue  # K + shift·I is not positive definite: a larger shift already failed
            if shift not in self._by_shift:
                a = self.k_.copy()
                a[np.diag_indices(n)] += shift
                try:
                    c = scipy.linalg.cho_factor(a, overwrite_a=True, check_finite=False)
                except np.linalg.LinAlgError:
                    self._not_pd = max(self._not_pd, shift)
                    continue
                del a
                self._by_shift[shift] = scipy.linalg.cho_solve(c, self.y_, check_finite=False)
            if ridge == 0:
                self.jitter_ = shift
            self.shifts_[ridge] = shift
            return self._by_shift[shift]
        raise np.linalg.LinAlgError("kernel matrix is not positive semi-definite even with jitter")

    # ------------------------------------------------------------------ iterative solver

    def _fit_iterative(self) -> None:
        n, c = self.y_.shape[0], self.y_.shape[1]
        t0 = time.perf_counter()
        self.op_ = pcg.KernelOperator(self._k_in, in_memory=pcg.holds_kernel(n, self.budget_bytes))
        self.scale_ = self.op_.trace / n
        grid = list(dict.fromkeys(self.ridges))
        batch = len(grid) if self.search_ == "grid" else min(len(grid), PATIENCE + 1)
        rank = self.rank
        if rank is None:
            rank = pcg.preconditioner_rank(n, c * batch, self.budget_bytes)
        self.precond_ = pcg.Nystrom.from_factor(pcg.rpcholesky(self.op_, rank, self.seed))
        self.iterations_: dict[float, int] = {}
        self.residuals_: dict[float, float] = {}
        self.info_ = {"rank": self.precond_.rank, "precond_s": time.perf_counter() - t0}
        if self.search_ == "grid":
            self._solve_iterative(grid)
        self.info_.update(total_s=time.perf_counter() - t0, passes=self.op_.passes)

    def _tolerances(self, y: np.ndarray) -> np.ndarray:
        """Per column: the A-norm error allowed by the stopping rule, tol·rms(y)/√(tr K / n)."""
        return self.tol * np.sqrt((y**2).mean(0)) / np.sqrt(max(self.scale_, 1e-300))

    def _solve_iterative(self, ridges: list[float]) -> None:
        n = self.n_
        dense_fits = dense_bytes(n) <= self.budget_bytes
        chains = [self._chain(r) for r in ridges]
        # without room for a dense fallback, λ = 0 and the jitter rungs of the others may pass
        # over a shift on which PCG stalls ("the smallest shift that converges")
        climb = [None if dense_fits else (0 if r == 0 else 1) for r in ridges]
        results = pcg.solve_chains(
            self.op_, self.precond_, self.y_, chains, self._tolerances(self.y_), self.maxiter, climb
        )
        for r, res in zip(ridges, results):
            self.iterations_[r] = res.iterations
            self.residuals_[r] = res.residual
            if res.status == "converged":
                self._duals[r] = res.x
                self.shifts_[r] = res.shift
                if r == 0:
                    self.jitter_ = res.shift
                if res.climbed_on_stall:
                    warnings.warn(
                        f"the iterative kernel regression for ridge {r:g} did not converge at "
                        f"smaller shifts in {self.maxiter} iterations; it uses the shift "
                        f"{res.shift:.3g} (shifts_).",
                        RuntimeWarning,
                        stacklevel=4,
                    )
            else:
                self._duals[r] = self._rescue(r, res)

    def _rescue(self, ridge: float, res: pcg.ChainResult) -> np.ndarray:
        """A ridge whose PCG did not converge: dense if it fits, else NaN; never the
        unconverged iterate."""
        n = self.n_
        if res.status == "stalled":
            what = (
                f"the iterative kernel regression for ridge {ridge:g} did not converge in "
                f"{self.maxiter} iterations (shift {res.shift:.3g}, relative residual "
                f"{res.residual:.1e})"
            )
        else:
            what = f"the kernel is not positive definite even with the largest jitter for ridge {ridge:g}"
        if dense_bytes(n) <= self.budget_bytes and res.status == "stalled":
            warnings.warn(f"{what}; solving it densely instead.", RuntimeWarning, stacklevel=4)
            if not hasattr(self, "k_"):  # the operator's float64 K where it holds one, not a second copy
                self.k_ = self.op_.k if self.op_.direct else np.asarray(self._k_in, dtype=np.float64)
            return self._cholesky_solve(ridge)
        why = (
            ""
            if res.status != "stalled"
            else (
                f", and a dense solve ({dense_bytes(n) / 2**20:.0f} MB) exceeds the memory budget "
                f"({self.budget_bytes / 2**20:.0f} MB)"
            )
        )
        warnings.warn(
            f"{what}{why}: its predictions are NaN and select() skips it.",
            RuntimeWarning,
            stacklevel=4,
        )
        return np.full((n, self.y_.shape[1]), np.nan)

    # ------------------------------------------------------------------ predictions

    def predict(self, k_cross: np.ndarray, ridge: float | None = None) -> np.ndarray:
        """Predictions (m, K) from K(x, X) (m, n)."""
        return rows_matmul(k_cross, self.dual(self.ridge_ if ridge is None else ridge))

    def select(self, k_val: np.ndarray, y_val: np.ndarray) -> float:
        """Choose λ from ``ridges`` with the lowest validation MSE by the ``search_`` (module
        docstring); sets and returns ``ridge_``. ``val_losses_``: λ -> validation MSE of every
        ridge solved."""
        self.val_losses_: dict[float, float] = {}
        if len(self.ridges) <= 1 or len(y_val) == 0:
            return self.ridge_
        y = np.asarray(y_val, np.float64)
        if self.search_ == "grid":
            self._validate(k_val, y, list(dict.fromkeys(self.ridges)))
        else:
            order = sorted(set(self.ridges), reverse=True)
            todo, order = order[:FIRST], order[FIRST:]
            while todo:
                if self.solver_ == "iterative":
                    self._solve_iterative(todo)
                self._validate(k_val, y, todo)
                solved = np.nan_to_num(list(self.val_losses_.values()), nan=np.inf)
                if len(solved) - 1 - int(np.argmin(solved)) >= PATIENCE:
                    break
                todo, order = order[: self._next_batch(order)], order[self._next_batch(order) :]
        losses = list(self.val_losses_.values())
        if np.all(np.isnan(losses)):
            raise np.linalg.LinAlgError("no ridge of the grid could be solved (see the warnings)")
        self.ridge_ = list(self.val_losses_)[int(np.nanargmin(losses))]
        return self.ridge_

    def _next_batch(self, order: list[float]) -> int:
        """How many of the remaining ridges ``order`` the descending search solves next: all of
        them when PCG's iterations have stopped growing as the ridge shrinks (the last ridge
        took at most ``SATURATED`` times the one before: the smaller ones cost about as much,
        so one batch of passes over K serves them all), else one. The choice changes the cost,
        never the ridge chosen."""
        its = list(self.iterations_.values()) if self.solver_ == "iterative" else []
        if len(its) >= 2 and its[-1] <= SATURATED * its[-2]:
            return len(order)
        return 1

    def _validate(self, k_val: np.ndarray, y: np.ndarray, ridges: list[float]) -> list[float]:
        """Validation MSE of ``ridges`` (one pass over ``k_val``), added to ``val_losses_``."""
        c = self.y_.shape[1]
        pred = rows_matmul(k_val, np.concatenate([self.dual(r) for r in ridges], axis=1))
        losses = [mse(pred[:, i * c : (i + 1) * c], y) for i in range(len(ridges))]
        self.val_losses_.update(zip(ridges, losses))
        return losses


def rows_matmul(k: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``k @ d`` in float64; a memmap or non-float64 ``k`` is read in row blocks (no full copy)."""
    if not isinstance(k, np.ndarray):
        k = np.asarray(k, dtype=np.float64)
    if k.dtype == np.float64 and not isinstance(k, np.memmap):
        return k @ d
    rows = max(1, pcg.ROW_BLOCK_BYTES // (8 * max(k.shape[1], 1)))
    out = np.empty((k.shape[0], d.shape[1]))
    for i in range(0, k.shape[0], rows):
        out[i : i + rows] = np.asarray(k[i : i + rows], dtype=np.float64) @ d
        pcg.release(k)
    return out


def mse(pred: np.ndarray, y: np.ndarray) -> float:
    """Mean over samples of the squared error summed over outputs."""
    return float(((pred - y) ** 2).sum(-1).mean())


def zero_one(pred: np.ndarray, labels: np.ndarray) -> float:
    """0-1 error: argmax for K > 1 outputs, sign for one output (labels 0/1); NaN without labels."""
    if len(labels) and labels.min() < 0:
        return float("nan")
    guess = (pred[:, 0] > 0).astype(int) if pred.shape[1] == 1 else pred.argmax(1)
    return float((guess != labels).mean())
