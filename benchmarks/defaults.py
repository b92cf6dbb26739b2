"""The four experiment defaults, each cold (an empty unit store), with the figures they report.

Prints one JSON object per experiment (one line each) and a header line with the machine's
fp32 matmul rate (GFLOP/s, 2048² GEMM on all threads), so that every time is quoted beside the
speed of the machine it was measured on:

* ``seconds``: wall time of ``ntklab run`` (subprocess, default workers), install excluded;
* ``exponents``: α, CI, ``fit_ok`` and the fitted range per method; ``differences``: the
  paired Δα to the network;
* ``test_loss_at_n_max``: mean test loss per method at the largest n; ``test_error_at_n_max``
  likewise for the 0-1 error; for kernel-evolution the ``evolution`` summary (verdict, angles,
  α(t)).

Run: ``python benchmarks/defaults.py [--only data-scaling,width-scaling] [--out DIR]``.
Numbers depend on the machine's load; run it on a quiet machine before quoting them.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

EXPERIMENTS = ("data-scaling", "width-scaling", "pretrained-kernel", "kernel-evolution")


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """fp32 GEMM rate of this machine (all torch threads)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - t0) / 1e9


def mean_at_n_max(run: Path, metric: str) -> dict[str, float]:
    """Mean over seeds of ``metric`` per method at the largest n of ``results.csv``."""
    with open(run / "results.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["metric"] == metric]
    if not rows:
        return {}
    n_max = max(int(r["n"]) for r in rows)
    vals: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if int(r["n"]) == n_max:
            vals[r["method"]].append(float(r["value"]))
    return {m: sum(v) / len(v) for m, v in sorted(vals.items())}


def run_default(name: str, out: Path) -> dict:
    """Run one experiment default with a store and data cache of its own (cold, nothing reused
    from another experiment); its time and summary figures."""
    env = {**os.environ, "NTKLAB_CACHE_DIR": str(out / f"cache-{name}")}  # cold: nothing shared
    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ntklab",
            "run",
            "--set",
            f"experiment={name}",
            "--out",
            str(out / name),
            "-q",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"experiment": name, "seconds": seconds, "error": proc.stderr.strip()[-2000:]}
    s = json.loads((out / name / "summary.json").read_text())
    keep = ("exponents", "differences", "test_loss_at_n_max", "f0", "evolution", "per_width", "training")
    return {
        "experiment": name,
        "seconds": round(seconds, 1),
        **{k: s[k] for k in keep if k in s},
        "test_error_at_n_max": mean_at_n_max(out / name, "test_error"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(EXPERIMENTS), help="comma-separated experiments")
    ap.add_argument("--out", default=None, help="keep the run directories here")
    args = ap.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="ntklab-defaults-"))
    print(json.dumps({"fp32_matmul_gflops": round(matmul_gflops(), 1), "threads": torch.get_num_threads()}))
    for name in args.only.split(","):
        print(json.dumps(run_default(name.strip(), out)), flush=True)


if __name__ == "__main__":
    main()
