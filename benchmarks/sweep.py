"""Sweep benchmark: a cold vs a fully cached ``data-scaling`` run, and Ray vs local executors.

Prints one JSON object:

* ``cache``: wall time of a ``data-scaling`` run into an empty unit store (``cold_s``) and of
  the same run again (``cached_s``: every unit read back from the store; only the kernel
  regressions, the fits and the figure are recomputed), and their ratio.
* ``executors``: a sweep of ``methods = ["nn"]`` trainings (``units`` of them, each on one
  thread) run by the local executor in-process, by ``--workers N`` local processes, and by a
  local Ray instance with N CPUs, each into an empty store; ``ray_s`` includes starting Ray
  (``ray_startup_s`` is that part). Speedups are local_s / other_s.

The generated dataset is prepared before timing, so the times are those of the units and the
analysis. Run: ``python benchmarks/sweep.py [--workers 2] [--quick]``. Numbers depend on the
machine's load; rerun on a quiet machine before quoting them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

CACHE_SWEEP = [
    "data.n_min=64",
    "data.n_max=512",
    "data.n_val=128",
    "data.n_test=500",
    "seeds=2",
    "train.steps=200",
    "arch.width=32",
    "fit.bootstrap=200",
    "device='cpu'",
]
EXECUTOR_SWEEP = [
    "methods=['nn']",
    "data.n_min=64",
    "data.n_max=512",
    "data.n_val=128",
    "data.n_test=500",
    "seeds=2",
    "train.steps=1000",
    "arch.width=32",
    "fit.bootstrap=200",
    "device='cpu'",
]
QUICK = ["data.n_max=256", "train.steps=60"]


def timed_run(overrides: list[str], root: Path, name: str, executor: Any = None) -> tuple[float, dict]:
    """Wall time and summary of ``run_experiment`` into ``root/name`` with store ``root/store-name``."""
    from ntklab.config import load_config
    from ntklab.run.runner import run_experiment
    from ntklab.run.store import Store

    cfg = load_config(None, overrides)
    t0 = time.perf_counter()
    summary = run_experiment(
        cfg, root / name, executor=executor, store=Store(root / f"store-{name}"), progress=False
    )
    return time.perf_counter() - t0, summary


def prepare_data(overrides: list[str]) -> None:
    """Generate and cache the dataset so that no timed run pays for it."""
    from ntklab.config import load_config
    from ntklab.run.context import RunContext

    _ = RunContext(load_config(None, overrides)).splits


def bench_cache(root: Path, overrides: list[str]) -> dict[str, Any]:
    prepare_data(overrides)
    cold, s1 = timed_run(overrides, root, "cold-then-cached")
    cached, s2 = timed_run(overrides, root, "cold-then-cached")
    assert s2["units"]["computed"] == 0 and s2["exponents"] == s1["exponents"]
    return {
        "units": s1["units"]["total"],
        "cold_s": round(cold, 2),
        "cached_s": round(cached, 2),
        "speedup": round(cold / cached, 1),
    }


def bench_executors(root: Path, overrides: list[str], workers: int) -> dict[str, Any]:
    from ntklab.run.local import LocalExecutor
    from ntklab.run.ray_executor import RayExecutor

    prepare_data(overrides)
    local, s = timed_run(overrides, root, "local")
    pool, _ = timed_run(overrides, root, "pool", LocalExecutor(workers))
    ray_exec = RayExecutor(num_cpus=workers)
    t0 = time.perf_counter()
    ray_exec.connect([])
    startup = time.perf_counter() - t0
    try:
        ray_s, _ = timed_run(overrides, root, "ray", ray_exec)
    finally:
        ray_exec.close()
    same = all(
        (root / n / "results.csv").read_text() == (root / "local" / "results.csv").read_text()
        for n in ("pool", "ray")
    )
    return {
        "units": s["units"]["total"],
        "workers": workers,
        "local_s": round(local, 2),
        "local_workers_s": round(pool, 2),
        "ray_s": round(ray_s + startup, 2),
        "ray_startup_s": round(startup, 2),
        "speedup_local_workers": round(local / pool, 2),
        "speedup_ray": round(local / (ray_s + startup), 2),
        "speedup_ray_excluding_startup": round(local / ray_s, 2),
        "identical_results": same,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2, help="local worker processes and Ray CPUs")
    p.add_argument("--quick", action="store_true", help="smaller sweeps (a smoke test)")
    args = p.parse_args()
    extra = QUICK if args.quick else []
    with tempfile.TemporaryDirectory(prefix="ntklab-bench-") as tmp:
        root = Path(tmp)
        os.environ["NTKLAB_CACHE_DIR"] = str(root / "data-cache")  # generated data (inherited by workers)
        out = {
            "machine": {
                "cpus": os.cpu_count(),
                "torch": torch.__version__,
                "python": platform.python_version(),
                "load_average_1m": round(os.getloadavg()[0], 2),
            },
            "cache": bench_cache(root, CACHE_SWEEP + extra),
            "executors": bench_executors(root, EXECUTOR_SWEEP + extra, args.workers),
        }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
