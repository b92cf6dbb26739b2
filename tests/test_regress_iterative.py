"""The iterative kernel regression (PCG) against the dense float64 solve, and the auto choice."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from ntklab import pcg, regress
from ntklab.regress import KernelRegressor, dense_bytes

RIDGES = [0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]  # the default kernel.ridges


def arccos_kernel(x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Two-layer ReLU NTK-like kernel (arc-cosine of order 1 plus order 0): a slowly decaying
    spectrum with a small floor, like the NTKs ntklab regresses with."""
    nx, nz = np.linalg.norm(x, axis=1), np.linalg.norm(z, axis=1)
    cos = np.clip((x @ z.T) / np.outer(nx, nz), -1.0, 1.0)
    t = np.arccos(cos)
    k1 = np.outer(nx, nz) * (np.sin(t) + (np.pi - t) * cos) / np.pi
    k0 = (x @ z.T) * (np.pi - t) / np.pi
    return k1 + k0


@pytest.fixture(scope="module")
def problem() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    n, m, d = 800, 200, 12
    x = rng.standard_normal((n + m, d))
    labels = (x[:, :3] @ [1.0, -2.0, 0.5] > 0).astype(int) + (x[:, 3] > 1)
    y = np.eye(3)[labels] - 1 / 3
    k = arccos_kernel(x, x[:n])
    return {"k": k[:n], "k_cross": k[n:], "y": y[:n], "y_cross": y[n:], "x": x}


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_iterative_agrees_with_dense_on_every_ridge(problem: dict) -> None:
    k, kc, y = problem["k"], problem["k_cross"], problem["y"]
    dense = KernelRegressor(RIDGES, solver="cholesky").fit(k, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # converges: no fallback, no warning
        it = KernelRegressor(RIDGES, solver="iterative", rank=100, search="grid").fit(k, y)
    assert it.solver_ == "iterative" and it.info_["rank"] == 100
    assert it.scale_ == pytest.approx(dense.scale_, rel=1e-12)
    for r in RIDGES:
        err = relative(it.predict(kc, r), dense.predict(kc, r))
        assert err < 1e-6, (r, err)
        assert it.residuals_[r] < 1e-6
        assert it.iterations_[r] < pcg.MAXITER
    assert it.jitter_ == dense.jitter_ == 0.0  # positive definite: ridgeless needs no jitter
    # small ridges need more iterations than large ones, even preconditioned
    assert it.iterations_[1.0] < it.iterations_[1e-6]
    # one pass over K per iteration serves all 8 ridges x 3 outputs (and checks the residuals
    # of the ridges that have stopped): at most one more pass at the end
    assert max(it.iterations_.values()) <= it.info_["passes"] <= max(it.iterations_.values()) + 1
    assert it.select(kc, problem["y_cross"]) == dense.select(kc, problem["y_cross"])


def test_descending_search_picks_the_grid_choice_without_the_small_ridges(problem: dict) -> None:
    rng = np.random.default_rng(5)
    k, kc, x = problem["k"], problem["k_cross"], problem["x"]
    f = np.stack([x[:, 0] * x[:, 1], np.sin(x[:, 2])], 1)  # smooth targets: a middle ridge wins
    y = f[:800] + 0.03 * rng.standard_normal((800, 2))
    y_val = f[800:900]
    grid = KernelRegressor(RIDGES, solver="cholesky").fit(k, y)
    best = grid.select(kc[:100], y_val)
    assert 0.0 < best < 1.0  # an interior choice, so the search has something to prove
    it = KernelRegressor(RIDGES, solver="iterative", rank=100).fit(k, y)
    assert it.search_ == "descending" and it.op_.passes == 0  # fit solves nothing yet
    assert it.select(kc[:100], y_val) == best
    solved = list(it.val_losses_)
    assert solved == sorted(RIDGES, reverse=True)[: len(solved)]  # from the largest down
    assert 0.0 not in solved and 1e-6 not in solved  # the slow ridges were never solved
    assert it.val_losses_[solved[-1]] > it.val_losses_[best]  # it stopped at the first rise
    for r in solved:  # the same losses as the grid search's
        assert it.val_losses_[r] == pytest.approx(grid.val_losses_[r], rel=1e-6)
    # the dense solver takes the same search when asked, and grid stays the dense default
    dense = KernelRegressor(RIDGES, solver="cholesky", search="descending").fit(k, y)
    assert dense.select(kc[:100], y_val) == best and list(dense.val_losses_) == solved
    assert list(grid.val_losses_) == RIDGES


@pytest.mark.parametrize(("budget_mb", "held"), [(8, False), (2048, True)])
def test_float32_memmap_is_read_in_row_blocks_or_held_in_float64(
    problem: dict, tmp_path: Path, monkeypatch, budget_mb: int, held: bool
) -> None:
    """A float32 kernel file: read in row blocks at every pass when 8·n² bytes (5 MB here) take
    more than half the memory budget, else read once into float64 memory; the same
    predictions either way, those of the float64 solve of the float32 kernel."""
    monkeypatch.setattr(pcg, "ROW_BLOCK_BYTES", 100 * 8 * 800)  # 100 rows per block
    k32 = problem["k"].astype(np.float32)
    np.save(tmp_path / "k.npy", k32)
    mm = np.load(tmp_path / "k.npy", mmap_mode="r")
    y = problem["y"]
    ridges = [0.0, 1e-4, 1e-2]
    it = KernelRegressor(ridges, solver="iterative", rank=100, memory_budget_mb=budget_mb).fit(mm, y)
    assert it.op_.direct == held and it.op_.block_rows == 100
    assert isinstance(it.op_.k, np.memmap) != held and (it.op_.k.dtype == np.float64) == held
    dense = KernelRegressor(ridges, solver="cholesky").fit(k32.astype(np.float64), y)
    for r in ridges:  # the float64 solve of the float32 kernel, not of the original
        assert relative(it.predict(problem["k_cross"], r), dense.predict(problem["k_cross"], r)) < 1e-6


def test_auto_choice_follows_the_memory_budget() -> None:
    n = 1000
    assert dense_bytes(n) == 16 * n * n
    assert KernelRegressor(RIDGES, memory_budget_mb=2048).choose(n) == "cholesky"
    assert KernelRegressor(RIDGES, memory_budget_mb=15).choose(n) == "iterative"  # 15 MB < 16 MB
    assert KernelRegressor(RIDGES, memory_budget_mb=16).choose(n) == "cholesky"
    assert KernelRegressor(list(np.logspace(-6, 0, 40))).choose(n) == "eigh"  # long grid
    assert KernelRegressor(RIDGES).choose(regress.ITERATIVE_MIN_N) == "iterative"
    assert KernelRegressor(RIDGES, solver="cholesky").choose(10**6) == "cholesky"  # as asked
    rng = np.random.default_rng(1)
    f = rng.standard_normal((300, 400))
    k, y = f @ f.T / 400, rng.standard_normal((300, 2))
    small = KernelRegressor([1e-3], memory_budget_mb=1).fit(k, y)
    large = KernelRegressor([1e-3], memory_budget_mb=64).fit(k, y)
    assert (small.solver_, large.solver_) == ("iterative", "cholesky")
    assert relative(small.predict(k[:20]), large.predict(k[:20])) < 1e-6


def test_unconverged_ridge_says_so_and_falls_back_to_dense() -> None:
    rng = np.random.default_rng(2)
    f = rng.standard_normal((400, 60))
    k = f @ f.T  # rank 60 < n: ridgeless is singular, PCG at λ' = 0 cannot converge
    y = rng.standard_normal((400, 2))
    with pytest.warns(RuntimeWarning, match="did not converge.*densely"):
        it = KernelRegressor([0.0, 1e-2], solver="iterative", rank=20, maxiter=50, search="grid").fit(k, y)
    dense = KernelRegressor([0.0, 1e-2], solver="cholesky").fit(k, y)
    np.testing.assert_allclose(it.dual(0.0), dense.dual(0.0), rtol=1e-10, atol=0)
    assert it.jitter_ == dense.jitter_ > 0  # the dense ladder's jitter, reported
    assert relative(it.predict(k[:50], 1e-2), dense.predict(k[:50], 1e-2)) < 1e-6


def test_unconverged_ridge_without_room_for_dense_is_nan_and_skipped() -> None:
    rng = np.random.default_rng(3)
    f = rng.standard_normal((600, 80))
    k = f @ f.T + 1e-9 * np.eye(600)
    y = rng.standard_normal((600, 2))
    ridges = [1e-7, 1.0]
    # 1 MB cannot hold the 5.8 MB dense solve; 40 iterations cannot reach λ = 1e-7 (it takes ~80)
    with pytest.warns(RuntimeWarning, match="NaN"):
        it = KernelRegressor(
            ridges, solver="iterative", memory_budget_mb=1, rank=10, maxiter=40, search="grid"
        ).fit(k, y)
    assert np.isnan(it.predict(k[:5], 1e-7)).all()
    assert np.isfinite(it.predict(k[:5], 1.0)).all()
    assert it.select(k[:100], y[:100]) == 1.0  # the NaN ridge is never chosen


def test_ridgeless_jitter_ladder_when_dense_does_not_fit() -> None:
    rng = np.random.default_rng(4)
    f = rng.standard_normal((500, 40))
    k = f @ f.T
    y = rng.standard_normal((500, 1))
    with pytest.warns(RuntimeWarning, match="uses the shift"):
        it = KernelRegressor([0.0], solver="iterative", memory_budget_mb=1, rank=10, maxiter=300).fit(k, y)
    assert it.jitter_ > 0
    shift = it.jitter_
    exact = np.linalg.solve(k + shift * np.eye(500), y)
    assert relative(k[:50] @ it.dual(0.0), k[:50] @ exact) < 1e-5


def test_rounding_negative_eigenvalues_raise_small_ridges_to_the_same_jitter() -> None:
    """A kernel PSD only up to rounding (like an eNTK from float32 Jacobians): the ridges below
    its negative eigenvalues take the jitter ladder's first positive definite shift, the same in
    the dense and the iterative solve (PCG proves indefiniteness by pᵀAp ≤ 0)."""
    rng = np.random.default_rng(5)
    n = 600
    f = rng.standard_normal((n, 150))
    noise = rng.standard_normal((n, n))
    k = f @ f.T / 150 + 2e-5 * (noise + noise.T) / np.sqrt(2 * n)  # eigenvalues down to ~ -4e-5
    y = np.eye(4)[rng.integers(0, 4, n)] - 0.25
    s = np.linalg.eigvalsh(k)
    scale = np.trace(k) / n
    assert -1e-4 < s[0] / scale < -1e-5  # indefinite at the level of the smallest ridges
    dense = KernelRegressor(RIDGES, solver="cholesky").fit(k, y)
    for r in RIDGES:
        dense.dual(r)  # no LinAlgError: λ' below the rounding is raised to a jitter
    it = KernelRegressor(RIDGES, solver="iterative", rank=100, search="grid").fit(k, y)
    assert it.shifts_ == dense.shifts_
    assert it.jitter_ == dense.jitter_ == dense.shifts_[1e-6] > -s[0]  # 0 and 1e-6 share it
    assert dense.shifts_[1e-3] == 1e-3 * dense.scale_  # a ridge above the rounding is kept
    for r in RIDGES:
        assert relative(it.predict(k[:100], r), dense.predict(k[:100], r)) < 1e-6, r
