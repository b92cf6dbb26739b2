"""Speed of the infinite-width NNGP+NTK (``ntklab.kernels.infinite.kernel_fn``).

Prints one JSON line per measurement: device, dtype, arch, input shape, n, wall seconds, kernel
entries per second (n·n / seconds, symmetric K(X, X) with both NNGP and NTK), process CPU
seconds, and peak memory (CUDA: max allocated; CPU: the process's peak resident set so far).

Cases (random normal inputs; the kernels do not depend on the widths in ``ntk`` param):

  a  cnn1d(depth=3) on MNIST-1D-shaped inputs (N, 1, 40), n = 1024 and 4096
  b  myrtle(5) on (N, 3, 8, 8), n = 256
  c  myrtle(5) on (N, 3, 32, 32), n = 64; with CUDA also n = 1024 in float64 and float32

Usage::

    PYTHONPATH=src python benchmarks/infinite_ntk.py --cases a,b,c
    PYTHONPATH=src python benchmarks/infinite_ntk.py --device cuda --dtype float32 --cases c --n 256
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time

import torch

from ntklab.arch import cnn1d, myrtle
from ntklab.kernels.infinite import kernel_fn

# ---- defaults ---------------------------------------------------------------------------
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = "float64"  # kernels are float64 in ntklab; float32 only to compare speed
CASES = "a,b,c"
MEMORY_BUDGET = 2**30  # bytes of position-pair arrays per tile (kernel_fn default)
SEED = 0
WIDTH = 64  # irrelevant to the ntk-parameterization kernels
SIZES = {  # case -> (arch label, spec factory, input shape, n values)
    "a": ("cnn1d(depth=3)", lambda: cnn1d(3, WIDTH), (1, 40), (1024, 4096)),
    "b": ("myrtle(5)", lambda: myrtle(5, WIDTH), (3, 8, 8), (256,)),
    "c": ("myrtle(5)", lambda: myrtle(5, WIDTH), (3, 32, 32), (64,)),
}
CUDA_EXTRA = [("c", 1024, "float64"), ("c", 1024, "float32")]  # added when CUDA is present
# -----------------------------------------------------------------------------------------


def peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB


def measure(case: str, n: int, device: torch.device, dtype: str, budget: int) -> dict:
    arch, make, shape, _ = SIZES[case]
    spec = make()
    gen = torch.Generator().manual_seed(SEED)
    x = torch.randn(n, *shape, generator=gen, dtype=torch.float64).to(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    k = kernel_fn(spec, x, dtype=getattr(torch, dtype), device=device, memory_budget_bytes=budget)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    assert torch.isfinite(k["ntk"]).all() and torch.isfinite(k["nngp"]).all()
    return {
        "bench": "infinite_ntk",
        "case": case,
        "arch": arch,
        "input_shape": list(shape),
        "n": n,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "dtype": dtype,
        "get": ["nngp", "ntk"],
        "seconds": round(seconds, 3),
        "entries_per_s": round(n * n / seconds, 1),
        "cpu_seconds": round(cpu_seconds, 3),  # process CPU time: robust to a shared machine
        "peak_memory_bytes": peak_memory(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=DEVICE)
    parser.add_argument("--dtype", default=DTYPE, choices=["float64", "float32"])
    parser.add_argument("--cases", default=CASES, help="comma-separated subset of a,b,c")
    parser.add_argument("--n", type=int, default=None, help="override every case's n")
    parser.add_argument("--budget", type=int, default=MEMORY_BUDGET, help="memory_budget_bytes")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in SIZES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {sorted(SIZES)}")
    runs = [(c, n, args.dtype) for c in cases for n in ((args.n,) if args.n else SIZES[c][3])]
    if device.type == "cuda" and args.n is None:
        runs += [r for r in CUDA_EXTRA if r[0] in cases and r not in runs]
    for case, n, dtype in runs:
        print(json.dumps(measure(case, n, device, dtype, args.budget)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
