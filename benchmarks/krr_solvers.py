"""Kernel ridge regression: the iterative solver (PCG, ``ntklab.pcg``) against the dense solve.

Prints one JSON line per measurement (``"kind"``):

* ``machine``: the fp32 and fp64 matmul rates (GFLOP/s, n = 2048 GEMM, best of 3) by wall time
  and per CPU second, the BLAS threads, cores and load average. The machine may be shared:
  every time below is given as wall seconds and as process CPU seconds (``cpu_seconds``), and
  with one BLAS thread (the default) the CPU seconds are what to compare;
* ``kernel``: how a kernel was built (or that it was read from the cache), and its seconds;
* ``agreement``: for one kernel and n, per ridge of the grid: the relative L2 difference of the
  test-set predictions of the iterative and the dense float64 (Cholesky) solve, the
  iterations, the true relative residual ‖Y − (K + λ'I)α‖/‖Y‖ and the dense test MSE; the
  jitter and the validation-selected ridge of both; seconds of both (fit + all 8 duals +
  test predictions);
* ``speed``: seconds of ``KernelRegressor(ridges, solver)`` fit + select + predict on the whole
  ridge grid (what ``regress_grid`` runs per n), for ``iterative`` and ``cholesky`` (the dense
  path ``auto`` takes for 8 ridges). With ``--dense-ridges k`` the dense path is timed on the
  last (largest) k ridges only and its time for the grid is scaled by 8 / k
  (``"dense_extrapolated": true``): those ridges cost one factorization each, as does every
  ridge of a positive definite kernel, so this is exact up to noise there and a lower bound
  when the jitter ladder needs more factorizations (an eNTK below its rounding floor).

Data: MNIST-1D from ``DataConfig(n_max=n)`` (25,000 generated samples; validation 256, test
1000). Kernels (rows and columns: the n training points, then validation, then test points),
built once and cached as float64 ``.npy`` under ``$NTKLAB_CACHE_DIR/bench-krr``:

* ``entk-cnn1d``: the eNTK at initialization (seed 0, trace mode) of the default
  ``cnn1d(depth=3, width=32)`` with 10 outputs, ``ntklab.kernels.empirical_ntk``;
* ``ntk-mlp``: the infinite-width NTK of ``ZOO["mlp"](3, 512, out=10)`` (ReLU, NTK
  parameterization), ``spec.kernel_fn(x1, x2, get=("ntk",))``.

Usage::

    PYTHONPATH=src python benchmarks/krr_solvers.py --agreement entk-cnn1d:8192,ntk-mlp:8192
    PYTHONPATH=src python benchmarks/krr_solvers.py --speed ntk-mlp:4096,entk-cnn1d:4096
    PYTHONPATH=src python benchmarks/krr_solvers.py --speed ntk-mlp:16384 --dense-ridges 2

A kernel of size n is also served by a cached larger one of the same kind (nested training
sets: its top-left block). Building them took (one thread): ntk-mlp 16384, 58 s; entk-cnn1d
8192, 80 s at 100 GFLOP/s fp32 (the Jacobians of 9,448 points and their contraction).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

RIDGES = [0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]  # the default kernel.ridges
N_VAL, N_TEST = 256, 1000
ENTK_ARCH = ("cnn1d", 3, 32)  # the default ArchConfig
MLP_ARCH = ("mlp", 3, 512)


def cache_root() -> Path:
    from ntklab.data.embedded import cache_dir

    return cache_dir() / "bench-krr"


def splits(n: int):
    from ntklab.config import DataConfig
    from ntklab.data.registry import load_splits

    return load_splits(DataConfig(n_max=n, n_val=N_VAL, n_test=N_TEST), n)


def build_kernel(kind: str, n: int) -> tuple[np.ndarray, dict]:
    """The (n + V + T) × (n + V + T) kernel of ``kind`` (memmap) and how it was obtained."""
    import torch

    from ntklab.arch import ZOO

    path = cache_root() / f"{kind}-{n}.npy"
    info = {"kind": "kernel", "kernel": kind, "n": n, "path": str(path)}
    if path.exists():
        return np.load(path, mmap_mode="r"), {**info, "cached": True}
    s = splits(n)
    x = torch.as_tensor(np.concatenate([s.x_train[:n], s.x_val, s.x_test]))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    t0 = time.perf_counter()
    if kind == "entk-cnn1d":
        from ntklab.kernels import empirical_ntk

        name, depth, width = ENTK_ARCH
        net = ZOO[name](depth, width, out=10).module(tuple(x.shape[1:]), seed=0).eval()
        k = empirical_ntk(net, x, mode="trace", out=tmp, progress=False)
        k.flush()
        del k
        info["arch"] = f"{name}(depth={depth}, width={width}, out=10), seed 0, eNTK trace mode"
    elif kind == "ntk-mlp":
        name, depth, width = MLP_ARCH
        spec = ZOO[name](depth, width, out=10)
        k = spec.kernel_fn(x.reshape(len(x), -1).double(), get=("ntk",), progress=False)["ntk"]
        np.save(tmp, k.numpy())
        del k
        info["arch"] = f"{name}(depth={depth}, width={width}, out=10), infinite-width NTK"
    else:
        raise SystemExit(f"unknown kernel {kind!r}; choose entk-cnn1d or ntk-mlp")
    os.replace(tmp, path)
    info.update(cached=False, seconds=round(time.perf_counter() - t0, 1))
    return np.load(path, mmap_mode="r"), info


def machine(threads: int) -> dict:
    """fp32 and fp64 GEMM rates (n = 2048, best of 3), by wall and by process CPU time."""
    rng = np.random.default_rng(0)
    out = {"kind": "machine", "blas_threads": threads, "cpu": platform.processor() or platform.machine()}
    for dtype in ("float32", "float64"):
        a = rng.standard_normal((2048, 2048)).astype(dtype)
        a @ a
        best_wall = best_cpu = float("inf")
        for _ in range(3):
            w, c = time.perf_counter(), time.process_time()
            a @ a
            best_wall = min(best_wall, time.perf_counter() - w)
            best_cpu = min(best_cpu, time.process_time() - c)
        flops = 2 * 2048**3
        key = "fp32" if dtype == "float32" else "fp64"
        out[f"{key}_gflops"] = round(flops / best_wall / 1e9, 1)
        out[f"{key}_gflops_per_cpu_second"] = round(flops / max(best_cpu, 1e-9) / 1e9, 1)
    out["load_average"] = [round(v, 2) for v in os.getloadavg()]
    out["cores"] = os.cpu_count()
    return out


class Timer:
    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def cached_size(kind: str, n: int) -> int:
    """The smallest cached kernel of ``kind`` with at least n training points (else n).

    Training sets are nested (the first n of one fixed order), so its top-left n × n block
    and the first n columns of its validation and test rows are the kernel of size n.
    """
    sizes = [
        int(p.stem.rsplit("-", 1)[1]) for p in cache_root().glob(f"{kind}-*.npy") if ".tmp" not in p.name
    ]
    return min([m for m in sizes if m >= n], default=n)


def problem(kind: str, n: int) -> dict:
    """Training kernel (in memory, float64), validation and test rows, targets."""
    big = cached_size(kind, n)
    mm, info = build_kernel(kind, big)
    print(json.dumps({**info, "used_n": n}), flush=True)
    s = splits(n)
    return {
        "k": np.array(mm[:n, :n]),
        "k_val": np.array(mm[big : big + N_VAL, :n]),
        "k_test": np.array(mm[big + N_VAL :, :n]),
        "y": s.y_train[:n].astype(np.float64),
        "y_val": s.y_val.astype(np.float64),
        "y_test": s.y_test.astype(np.float64),
        "arch": info.get("arch") or describe(kind),
    }


def describe(kind: str) -> str:
    if kind == "entk-cnn1d":
        name, depth, width = ENTK_ARCH
        return f"{name}(depth={depth}, width={width}, out=10), seed 0, eNTK trace mode"
    name, depth, width = MLP_ARCH
    return f"{name}(depth={depth}, width={width}, out=10), infinite-width NTK"


def agreement(kind: str, n: int) -> dict:
    from ntklab.regress import KernelRegressor

    p = problem(kind, n)
    with Timer() as td:
        dense = KernelRegressor(RIDGES, solver="cholesky").fit(p["k"], p["y"])
        dense_pred = {r: p["k_test"] @ dense.dual(r) for r in RIDGES}
    with Timer() as ti:
        it = KernelRegressor(RIDGES, solver="iterative", search="grid").fit(p["k"], p["y"])
        it_pred = {r: p["k_test"] @ it.dual(r) for r in RIDGES}
    ridges = []
    for r in RIDGES:
        diff = np.linalg.norm(it_pred[r] - dense_pred[r]) / np.linalg.norm(dense_pred[r])
        ridges.append(
            {
                "ridge": r,
                "test_pred_rel_l2": float(f"{diff:.3e}"),
                "iterations": it.iterations_[r],
                "residual": float(f"{it.residuals_[r]:.3e}"),
                "test_mse_dense": round(float(((dense_pred[r] - p["y_test"]) ** 2).sum(1).mean()), 6),
            }
        )
    return {
        "kind": "agreement",
        "kernel": kind,
        "arch": p["arch"],
        "n": n,
        "ridges": ridges,
        "max_rel_l2": max(r["test_pred_rel_l2"] for r in ridges),
        "tol": it.tol,
        "rank": it.info_["rank"],
        "passes": it.op_.passes,  # every pass over K, the search's included
        "jitter": {"dense": dense.jitter_, "iterative": it.jitter_},
        "selected": {
            "dense": dense.select(p["k_val"], p["y_val"]),
            "iterative": it.select(p["k_val"], p["y_val"]),
        },
        "seconds": {"dense": round(td.wall, 1), "iterative": round(ti.wall, 1)},
        "cpu_seconds": {"dense": round(td.cpu, 1), "iterative": round(ti.cpu, 1)},
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def speed(kind: str, n: int, dense_ridges: int) -> dict:
    """fit + select + predict on the whole grid, as ``regress_grid`` runs it."""
    from ntklab.regress import KernelRegressor

    p = problem(kind, n)

    def run(solver: str, ridges: list[float]) -> tuple[Timer, KernelRegressor]:
        with Timer() as t:
            reg = KernelRegressor(ridges, solver=solver).fit(p["k"], p["y"])
            reg.select(p["k_val"], p["y_val"])
            reg.predict(p["k_test"])
        return t, reg

    ti, it = run("iterative", RIDGES)
    k = min(dense_ridges, len(RIDGES)) if dense_ridges > 0 else len(RIDGES)
    td, _ = run("cholesky", RIDGES[len(RIDGES) - k :])
    scale = len(RIDGES) / k
    return {
        "kind": "speed",
        "kernel": kind,
        "arch": p["arch"],
        "n": n,
        "ridges": len(RIDGES),
        "seconds": {"iterative": round(ti.wall, 1), "dense": round(td.wall * scale, 1)},
        "cpu_seconds": {"iterative": round(ti.cpu, 1), "dense": round(td.cpu * scale, 1)},
        "dense_ridges_timed": RIDGES[len(RIDGES) - k :],
        "dense_extrapolated": k < len(RIDGES),
        "speedup_cpu": round(td.cpu * scale / ti.cpu, 2),
        "iterative": {
            "rank": it.info_["rank"],
            "passes": it.op_.passes,  # every pass over K, the search's included
            "precond_s": round(it.info_["precond_s"], 1),
            "iterations": {str(r): v for r, v in it.iterations_.items()},
        },
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", default="", help="kernels to build only, e.g. entk-cnn1d:8192")
    parser.add_argument("--agreement", default="", help="kernel:n,... to compare solvers on")
    parser.add_argument("--speed", default="", help="kernel:n,... to time both solvers on")
    parser.add_argument("--dense-ridges", type=int, default=0, help="time dense on this many ridges")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (1: fair on a shared machine)")
    args = parser.parse_args(argv)
    # load every BLAS (numpy's, and SciPy's own OpenBLAS behind scipy.linalg) before limiting
    # threads: threadpoolctl limits only the libraries loaded when it is entered
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_info, threadpool_limits

    import ntklab.regress  # noqa: F401

    def items(text: str) -> list[tuple[str, int]]:
        return [(a, int(b)) for a, b in (x.split(":") for x in text.split(",") if x)]

    with threadpool_limits(args.threads, user_api="blas"):
        info = machine(args.threads)
        info["blas_libraries"] = [
            {"library": i["internal_api"], "threads": i["num_threads"], "path": Path(i["filepath"]).name}
            for i in threadpool_info()
            if i["user_api"] == "blas"
        ]
        print(json.dumps(info), flush=True)
        for kind, n in items(args.build):
            _, info = build_kernel(kind, n)
            print(json.dumps(info), flush=True)
        for kind, n in items(args.agreement):
            print(json.dumps(agreement(kind, n)), flush=True)
        for kind, n in items(args.speed):
            print(json.dumps(speed(kind, n, args.dense_ridges)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
