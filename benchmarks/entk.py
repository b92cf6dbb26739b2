"""How fast is ntklab's empirical NTK, against the torch.func tutorial recipe and nngeometry?

Prints one JSON line per measurement (``"kind"``: ``peak`` | ``entk`` | ``baseline`` |
``memory``). For every workload: seconds of each implementation (``auto``, ``jacobian``,
``structured``, ``ntvp``), the auto choice, the contraction phase's GFLOP/s against the fp32
matmul peak measured in the same run, and two baselines on the same model shapes:

* ``tutorial`` — PyTorch's NTK tutorial: ``vmap(jacrev)`` Jacobians of all samples, then
  ``einsum('Naf,Maf->NM')`` (trace), Jacobians computed once for x2 = x1;
* ``nngeometry`` — ``nngeometry.gram.GramMatrix`` (its only mode, the full C×C Gram; hooks on
  ``torch.nn`` layers, so it runs on an ``nn.Linear``/``nn.Conv*`` twin of the model with the
  same shapes).

A measurement whose estimate exceeds ``MAX_SECONDS`` runs at a smaller n and is extrapolated:
per-sample work ∝ n, pairwise work ∝ n² (``"extrapolated_from_n"`` says so; this favours the
slow method, so speedups quoted from it are conservative).

Usage: ``PYTHONPATH=src python benchmarks/entk.py [--quick] [--only mlp,cnn1d] [--memory]``
(``pip install nngeometry --no-deps`` for the nngeometry baseline: its torchvision requirement
would otherwise pull a CUDA build of torch over the CPU one).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from ntklab.arch import cnn1d, mlp, myrtle
from ntklab.kernels import empirical_ntk
from ntklab.kernels.empirical.mode import Mode
from ntklab.kernels.empirical.probe import build_plan
from ntklab.kernels.empirical.route import choose_route

# ----------------------------------------------------------------------------- defaults
MODE = "trace"
BUDGET = 2 * 2**30  # the lead's default kernel.memory_budget_mb = 2048
MAX_SECONDS = 180.0  # beyond this, time a smaller n and extrapolate
BASELINE_MEMORY = 2.5 * 2**30  # the tutorial holds every Jacobian: cap its n by memory
IMPLEMENTATIONS = ("auto", "structured", "jacobian", "ntvp")
WORKLOADS: list[dict[str, Any]] = [
    {"name": "mlp-40-512-512-1", "spec": lambda: mlp(2, 512, out=1), "shape": (40,), "n": (1024, 4096)},
    {"name": "cnn1d-3-128", "spec": lambda: cnn1d(3, 128), "shape": (1, 40), "n": (1024, 4096)},
    {"name": "myrtle5-64", "spec": lambda: myrtle(5, 64), "shape": (3, 32, 32), "n": (256,)},
]
MEMORY_CASES = [  # (spec expression, input shape, n, budget): a large CPU case, a kernel >> budget
    ("myrtle(5, 16)", (3, 32, 32), 3000, 256 * 2**20),
    ("mlp(2, 512, out=1)", (40,), 8000, 64 * 2**20),
]
SEED = 0


def emit(**rec: Any) -> None:
    rec.setdefault("threads", torch.get_num_threads())
    rec.setdefault("load_avg_1m", round(os.getloadavg()[0], 2))
    print(json.dumps(rec), flush=True)


def matmul_peak(n: int = 4096, reps: int = 3) -> float:
    """Best fp32 GEMM rate (GFLOP/s) of an n×n×n product."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    c = a @ b
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b, out=c)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def inputs(shape: tuple[int, ...], n: int) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(SEED))


# ----------------------------------------------------------------------------- ntklab


def estimate_seconds(model: nn.Module, x: torch.Tensor, impl: str, gflops: float) -> float:
    """Cost-model estimate (flops / rate) of one implementation on x (symmetric)."""
    plan = build_plan(model, x[:3])
    route = choose_route(plan, Mode.of(MODE, None, plan.n_outputs), len(x), len(x), True, BUDGET, impl)
    key = impl if impl in route.flops else "auto"
    return route.flops[key] / (gflops * 1e9)


def time_ntklab(model: nn.Module, x: torch.Tensor, impl: str) -> dict[str, Any]:
    stats: dict[str, Any] = {}
    t = time.perf_counter()
    empirical_ntk(
        model, x, mode=MODE, implementation=impl, memory_budget_bytes=BUDGET, progress=False, stats=stats
    )
    total = time.perf_counter() - t
    return {
        "seconds": total,
        "features_s": stats["features_s"],
        "contract_s": stats["contract_s"],
        "contract_gflop": stats["contract_flops"] / 1e9,
        "implementation": stats["implementation"],
        "gram_layers": stats["gram_layers"],
    }


def extrapolate(small: dict[str, Any], n_small: int, n: int, linear: str, quadratic: str) -> dict[str, Any]:
    r = n / n_small
    out = dict(small)
    out[linear] = small[linear] * r
    out[quadratic] = small[quadratic] * r * r
    out["seconds"] = small["seconds"] + out[linear] - small[linear] + out[quadratic] - small[quadratic]
    out["extrapolated_from_n"] = n_small
    return out


def bench_ntklab(
    name: str, model: nn.Module, shape: tuple[int, ...], n: int, peak0: float
) -> dict[str, float]:
    times: dict[str, float] = {}
    x = inputs(shape, n)
    empirical_ntk(model, x[:8], mode=MODE, progress=False)  # warm up (first-call costs)
    for impl in IMPLEMENTATIONS:
        # the machine is shared: re-measure the peak next to each run; fraction_of_peak uses the
        # larger of that and the run's first measurement (conservative)
        local = matmul_peak(2048)
        peak = max(local, peak0)
        est = estimate_seconds(model, x, impl, (0.1 if impl == "ntvp" else 0.35) * max(peak, peak0))
        n_run = n
        if est > MAX_SECONDS:
            n_run = max(32, int(n * math.sqrt(MAX_SECONDS / 4 / est)) // 32 * 32)
        res = time_ntklab(model, x[:n_run], impl)
        if n_run < n:
            res = extrapolate(res, n_run, n, "features_s", "contract_s")
            res["contract_gflop"] *= (n / n_run) ** 2
        rate = res["contract_gflop"] / max(res["contract_s"], 1e-9)
        times[impl] = res["seconds"]
        emit(
            kind="entk",
            workload=name,
            n=n,
            implementation=impl,
            chosen=res["implementation"],
            seconds=round(res["seconds"], 3),
            features_s=round(res["features_s"], 3),
            contract_s=round(res["contract_s"], 3),
            contract_gflops_per_s=round(rate, 1),
            fraction_of_peak=round(rate / peak, 3),
            fraction_of_local_peak=round(rate / local, 3),
            peak_gflops_per_s=round(peak, 1),
            local_peak_gflops_per_s=round(local, 1),
            gram_layers=res["gram_layers"],
            estimate_s=round(est, 2),
            extrapolated_from_n=res.get("extrapolated_from_n"),
            params=sum(p.numel() for p in model.parameters()),
            mode=MODE,
            dtype="float32",
            device="cpu",
            budget_bytes=BUDGET,
        )
    return times


# ----------------------------------------------------------------------------- baselines


def tutorial_ntk(model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(jacobian seconds, contraction seconds) of the torch.func tutorial recipe, trace mode."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def fnet_single(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return functional_call(model, p, (xi.unsqueeze(0),)).squeeze(0)

    t = time.perf_counter()
    jac = vmap(jacrev(fnet_single), (None, 0))(params, x)
    jac = [j.flatten(2) for j in jac.values()]
    t_jac = time.perf_counter() - t
    t = time.perf_counter()
    torch.stack([torch.einsum("Naf,Maf->NM", j, j) for j in jac]).sum(0)
    return t_jac, time.perf_counter() - t


def bench_tutorial(
    name: str, model: nn.Module, shape: tuple[int, ...], n: int, times: dict[str, float]
) -> None:
    with torch.no_grad():
        c = model(inputs(shape, 1)).numel()
    p = sum(q.numel() for q in model.parameters())
    per_sample = 4 * c * p * 2  # Jacobian + vmap workspace
    n_run = min(n, max(16, int(BASELINE_MEMORY // per_sample) // 16 * 16))
    t_jac, t_con = tutorial_ntk(model, inputs(shape, n_run))
    res = {"seconds": t_jac + t_con, "jacobian_s": t_jac, "contract_s": t_con}
    if n_run < n:
        res = extrapolate(res, n_run, n, "jacobian_s", "contract_s")
    best = min(times.values())
    emit(
        kind="baseline",
        baseline="tutorial",
        workload=name,
        n=n,
        seconds=round(res["seconds"], 3),
        jacobian_s=round(res["jacobian_s"], 3),
        contract_s=round(res["contract_s"], 3),
        extrapolated_from_n=res.get("extrapolated_from_n"),
        best_ntklab_s=round(best, 3),
        speedup_best=round(res["seconds"] / best, 2),
        speedup_auto=round(res["seconds"] / times["auto"], 2),
        mode=MODE,
    )


def torch_twin(name: str, model: nn.Module) -> nn.Module:
    """An nn.Linear / nn.Conv* model with the same shapes (nngeometry hooks torch.nn layers)."""
    from ntklab.arch.linear import ConvModule, DenseModule
    from ntklab.arch.pooling import AvgPoolModule, FlattenModule, GlobalAvgPoolModule

    layers: list[nn.Module] = []
    for m in model:
        if isinstance(m, DenseModule):
            lin = nn.Linear(m.weight.shape[1], m.weight.shape[0])
            layers.append(lin)
        elif isinstance(m, ConvModule):
            w = m.weight
            k = tuple(w.shape[2:])
            conv = (nn.Conv1d if w.dim() == 3 else nn.Conv2d)(
                w.shape[1], w.shape[0], k, padding=tuple(i // 2 for i in k)
            )
            layers.append(conv)
        elif isinstance(m, AvgPoolModule):
            layers.append((nn.AvgPool1d if len(m.window) == 1 else nn.AvgPool2d)(m.window, m.stride))
        elif isinstance(m, GlobalAvgPoolModule):
            layers.append(nn.Sequential(nn.Flatten(2), _Mean()))
        elif isinstance(m, FlattenModule):
            layers.append(nn.Flatten())
        else:
            layers.append(m)
    return nn.Sequential(*layers)


class _Mean(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(-1)


def nngeometry_gram(model: nn.Module, x: torch.Tensor, batch: int = 256) -> float:
    from nngeometry.gram import GramMatrix
    from torch.utils.data import DataLoader, TensorDataset

    t = time.perf_counter()
    GramMatrix(model, DataLoader(TensorDataset(x), batch_size=batch))
    return time.perf_counter() - t


def bench_nngeometry(
    name: str, model: nn.Module, shape: tuple[int, ...], n: int, times: dict[str, float]
) -> None:
    try:
        import nngeometry  # noqa: F401
    except Exception as err:  # not installed or broken with this torch
        emit(kind="baseline", baseline="nngeometry", workload=name, n=n, error=f"{type(err).__name__}: {err}")
        return
    twin = torch_twin(name, model)
    try:  # grow n by 4x while the quadratic prediction stays under MAX_SECONDS / 2
        n_run = min(n, 32)
        t = nngeometry_gram(twin, inputs(shape, n_run))
        while n_run < n and t * (min(n, 4 * n_run) / n_run) ** 2 <= MAX_SECONDS / 2:
            n_run = min(n, 4 * n_run)
            t = nngeometry_gram(twin, inputs(shape, n_run))
    except Exception as err:
        emit(kind="baseline", baseline="nngeometry", workload=name, n=n, error=f"{type(err).__name__}: {err}")
        return
    seconds = t * (n / n_run) ** 2
    stats: dict[str, Any] = {}  # ntklab in nngeometry's mode (full C x C) at the same n
    t0 = time.perf_counter()
    empirical_ntk(
        model, inputs(shape, n_run), mode="full", memory_budget_bytes=BUDGET, progress=False, stats=stats
    )
    full_s = (time.perf_counter() - t0) * (n / n_run) ** 2
    best = min(times.values())
    emit(
        kind="baseline",
        baseline="nngeometry",
        workload=name,
        n=n,
        seconds=round(seconds, 3),
        extrapolated_from_n=None if n_run == n else n_run,
        note="full C x C Gram in float32 (nngeometry has no trace mode)",
        ntklab_full_s=round(full_s, 3),
        ntklab_full_implementation=stats["implementation"],
        speedup_full_mode=round(seconds / full_s, 2),
        best_ntklab_s=round(best, 3),
        speedup_best=round(seconds / best, 2),
        speedup_auto=round(seconds / times["auto"], 2),
    )


# ----------------------------------------------------------------------------- memory

MEMORY_SCRIPT = """
import json, sys, time, tracemalloc
import torch
from ntklab.arch import mlp, myrtle
from ntklab.kernels import empirical_ntk

def status():
    f = dict(line.split(':', 1) for line in open('/proc/self/status'))
    return {k: int(f[k].split()[0]) * 1024 for k in ('VmRSS', 'VmHWM')}

spec, shape, n, budget, out = sys.argv[1], eval(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.set_num_threads(int(sys.argv[6]))
model = eval(spec).module(shape)
x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(0))
empirical_ntk(model, x[:8], progress=False)  # warm up
open('/proc/self/clear_refs', 'w').write('5')
base = status()['VmRSS']
tracemalloc.start()
stats = {}
t = time.perf_counter()
k = empirical_ntk(model, x, memory_budget_bytes=budget, out=out, progress=False, stats=stats)
sec = time.perf_counter() - t
print(json.dumps({'seconds': sec, 'rss_peak_over_base': status()['VmHWM'] - base, 'rss_base': base,
                  'tracemalloc_peak': tracemalloc.get_traced_memory()[1], 'kernel_bytes': 8 * n * n,
                  'implementation': stats['implementation'], 'panel': stats['panel'], 'chunk': stats['chunk'],
                  'features_s': stats['features_s'], 'contract_s': stats['contract_s']}))
"""


def bench_memory() -> None:
    """Peak memory of one process computing a kernel to a memmap, against the budget."""
    for spec, shape, n, budget in MEMORY_CASES:
        with tempfile.TemporaryDirectory() as tmp:
            script = Path(tmp) / "mem.py"
            script.write_text(MEMORY_SCRIPT)
            env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
            args = [
                spec,
                repr(shape),
                str(n),
                str(budget),
                str(Path(tmp) / "k.npy"),
                str(torch.get_num_threads()),
            ]
            res = subprocess.run(
                [sys.executable, str(script), *args], capture_output=True, text=True, env=env
            )
            if res.returncode:
                emit(kind="memory", workload=spec, error=res.stderr[-1000:])
                continue
            rep = json.loads(res.stdout.strip().splitlines()[-1])
        emit(
            kind="memory",
            workload=spec,
            input_shape=list(shape),
            n=n,
            budget_bytes=budget,
            out="memmap",
            rss_peak_over_base_bytes=rep["rss_peak_over_base"],
            rss_peak_over_budget=round(rep["rss_peak_over_base"] / budget, 3),
            tracemalloc_peak_bytes=rep["tracemalloc_peak"],
            kernel_bytes=rep["kernel_bytes"],
            kernel_over_budget=round(rep["kernel_bytes"] / budget, 2),
            seconds=round(rep["seconds"], 2),
            features_s=round(rep["features_s"], 2),
            contract_s=round(rep["contract_s"], 2),
            implementation=rep["implementation"],
            panel=rep["panel"],
            chunk=rep["chunk"],
            note="RSS high-water mark above the RSS before the call (reset via /proc/self/clear_refs); "
            "tracemalloc sees only Python/numpy allocations, not torch's",
        )


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smallest n of each workload only")
    ap.add_argument("--only", default="", help="comma-separated workload name prefixes")
    ap.add_argument("--memory", action="store_true", help="also run the memory measurements")
    ap.add_argument("--memory-only", action="store_true", help="only the memory measurements")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    if args.memory_only:
        bench_memory()
        return
    peak = matmul_peak()
    emit(kind="peak", what="fp32 matmul 4096^3, best of 3", gflops_per_s=round(peak, 1), device="cpu")
    for w in WORKLOADS:
        if args.only and not any(w["name"].startswith(o) for o in args.only.split(",")):
            continue
        model = w["spec"]().module(w["shape"], seed=SEED)
        for n in w["n"][:1] if args.quick else w["n"]:
            times = bench_ntklab(w["name"], model, w["shape"], n, peak)
            if not args.no_baselines:
                bench_tutorial(w["name"], model, w["shape"], n, times)
                bench_nngeometry(w["name"], model, w["shape"], n, times)
    if args.memory:
        bench_memory()


if __name__ == "__main__":
    main()
