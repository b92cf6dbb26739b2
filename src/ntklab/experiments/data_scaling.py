"""Experiment ``data-scaling``: test loss vs n for the network and for kernel regression.

For every n of the grid and every repetition: train the network on the first n samples
(method ``nn``); compute the eNTK at initialization once on the largest n plus the validation
and test points and slice it for every smaller n (``entk``); the infinite-width NTK and NNGP
of the same spec likewise (``ntk``, ``nngp``, seed-independent). Fit L(n) ≈ a·n^(−α).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ntklab.config import DataScalingConfig
from ntklab.experiments.common import arch_label, arch_reads, data_reads, regress_grid
from ntklab.experiments.tidy import exponents, row, rows_from
from ntklab.run.units import Unit

NAME = "data-scaling"
U = "ntklab.experiments.units"
METRICS = ("test_mse", "test_error", "ridge", "jitter")


def train_unit(cfg: Any, n: int, seed_index: int, width: int | None = None, steps: int | None = None) -> Unit:
    """Train the network of repetition ``seed_index`` on n samples."""
    args = {"n": n, "seed_index": seed_index, "width": width, "steps": steps}
    reads = {
        "seed": cfg.seed,
        "data": data_reads(cfg),
        "arch": arch_reads(cfg, width),
        "train": cfg.train.model_dump(mode="json"),
    }
    return Unit(
        "train",
        f"{U}:train_network",
        args,
        reads,
        label=f"train n={n} seed={seed_index}" + (f" w={width}" if width else ""),
    )


def entk_unit(cfg: Any, n: int, seed_index: int, width: int | None = None) -> Unit:
    """eNTK at init of repetition ``seed_index`` on the first n training points."""
    args = {"n": n, "seed_index": seed_index, "width": width}
    reads = {
        "seed": cfg.seed,
        "data": data_reads(cfg),
        "arch": arch_reads(cfg, width),
        "mode": cfg.kernel.mode,
        "output_index": cfg.kernel.output_index,
    }
    return Unit(
        "entk",
        f"{U}:entk_at_init",
        args,
        reads,
        label=f"eNTK n={n} seed={seed_index}" + (f" w={width}" if width else ""),
    )


#: Training points per side of one block of the infinite kernels. The infinite NTK is the
#: longest computation of a sweep (minutes at n = 4096 on one core); in blocks it runs on every
#: worker, or every Ray node, side by side with the short units instead of alone at the end.
INFINITE_BLOCK = 1024


def spans(n: int, block: int | None = None) -> list[tuple[int, int]]:
    """[(0, b), (b, 2b), ..., (., n)]: the row/column blocks of n points (b = ``block`` or
    :data:`INFINITE_BLOCK`)."""
    b = block or INFINITE_BLOCK
    return [(i, min(i + b, n)) for i in range(0, n, b)]


def infinite_units(cfg: Any, n: int, cross: bool = True) -> list[Unit]:
    """Infinite NNGP and NTK on the first n training points, as independent blocks.

    K(train[:n], train[:n]) in blocks of :data:`INFINITE_BLOCK` points on and above the
    diagonal, and (``cross``) K(val+test, train[:n]) in column blocks: about n²/2B² + 3n/2B
    units. A block depends on its index ranges, not on n, so runs whose n differ share the
    blocks they have in common. :func:`infinite_result` assembles them.
    """
    arch = arch_reads(cfg)
    if cfg.arch.parameterization == "ntk" and cfg.arch.layers is None:
        arch.pop("width")  # ntk-parameterized infinite kernels do not depend on the width
    reads = {"data": data_reads(cfg), "arch": arch}
    sp = spans(n)

    def unit(args: dict, label: str) -> Unit:
        return Unit("infinite", f"{U}:infinite_block", args, reads, label=f"NTK/NNGP {label}")

    units = (
        [unit({"part": "cross", "cols": list(c)}, f"eval x train[{c[0]}:{c[1]}]") for c in sp]
        if cross
        else []
    )
    units += [
        unit(
            {"part": "train", "cols": list(c), "rows": list(r)},
            f"train[{r[0]}:{r[1]}] x train[{c[0]}:{c[1]}]",
        )
        for r in sp
        for c in sp
        if c[0] >= r[0]
    ]
    return units


def infinite_result(
    cfg: Any, n: int, results: dict[str, Any], cross: bool = True
) -> dict[str, dict[str, np.ndarray]] | None:
    """``{"nngp"|"ntk": {"train": (n, n), "cross": (V+T, n)}}`` from the blocks of
    :func:`infinite_units` ("cross" only with ``cross``); None while any block is missing."""
    parts = [(u.args, results.get(u.key)) for u in infinite_units(cfg, n, cross)]
    if not parts or any(r is None for _, r in parts):
        return None
    out: dict[str, dict[str, np.ndarray]] = {}
    for name in ("nngp", "ntk"):
        blocks = {"train": np.empty((n, n))}
        if cross:
            e = next(r[name].shape[0] for a, r in parts if a["part"] == "cross")
            blocks["cross"] = np.empty((e, n))
        for a, r in parts:
            (c0, c1), b = a["cols"], r[name]
            if a["part"] == "cross":
                blocks["cross"][:, c0:c1] = b
            else:
                (r0, r1) = a["rows"]
                blocks["train"][r0:r1, c0:c1] = b
                blocks["train"][c0:c1, r0:r1] = b.T
        out[name] = blocks
    return out


def plan(cfg: Any) -> list[Unit]:
    """Every unit of the experiment: the infinite-kernel blocks, then per seed the eNTK at
    init and the networks (also the base of pretrained-kernel's plan)."""
    grid, n_max = cfg.data.n_grid(), cfg.data.n_max
    units: list[Unit] = []
    if {"ntk", "nngp"} & set(cfg.methods):
        units += infinite_units(cfg, n_max)
    for i in range(cfg.seeds):
        if "entk" in cfg.methods:
            units.append(entk_unit(cfg, n_max, i))
        if "nn" in cfg.methods:
            units += [train_unit(cfg, n, i) for n in grid]
    return units


def kernel_rows(
    cfg: Any, ctx: Any, method: str, kernel: dict, seed: int, width: int, grid: list[int]
) -> list[dict]:
    """Regression rows of one kernel across the grid."""
    recs = regress_grid(
        kernel["train"], kernel["cross"], ctx.splits, grid, cfg.kernel.ridges, cfg.kernel.ridge
    )
    return [r for rec in recs for r in rows_from(cfg.experiment, method, width, seed, rec, METRICS)]


def nn_rows(cfg: Any, method: str, result: dict, n: int, seed: int, width: int) -> list[dict]:
    """Rows of one trained network."""
    return [
        row(cfg.experiment, method, n, width, seed, result["steps"], m, result[m])
        for m in ("test_mse", "test_error", "train_mse", "train_error")
    ]


def base_rows(cfg: Any, results: dict[str, Any], ctx: Any) -> list[dict]:
    """Tidy rows of the units of :func:`plan`: the infinite kernels, the eNTK at init and the
    networks, as asked by ``cfg.methods`` (missing units are skipped)."""
    grid, n_max, w = cfg.data.n_grid(), cfg.data.n_max, cfg.arch.width
    rows: list[dict] = []
    inf = infinite_result(cfg, n_max, results) if {"ntk", "nngp"} & set(cfg.methods) else None
    if inf is not None:
        for m in ("ntk", "nngp"):
            if m in cfg.methods:
                rows += kernel_rows(cfg, ctx, m, inf[m], 0, 0, grid)
    for i in range(cfg.seeds):
        k = results.get(entk_unit(cfg, n_max, i).key)
        if k is not None and "entk" in cfg.methods:
            rows += kernel_rows(cfg, ctx, "entk", k, i, w, grid)
        for n in grid:
            r = results.get(train_unit(cfg, n, i).key)
            if r is not None and "nn" in cfg.methods:
                rows += nn_rows(cfg, "nn", r, n, i, w)
    return rows


def analyze(cfg: DataScalingConfig, results: dict[str, Any], ctx: Any) -> tuple[list[dict], dict[str, Any]]:
    """Tidy rows and the summary's ``exponents`` from unit results (missing units are skipped)."""
    rows = base_rows(cfg, results, ctx)
    return rows, {"exponents": exponents(rows, cfg.fit, cfg.seed), "n_grid": cfg.data.n_grid()}


def figures(cfg: DataScalingConfig, rows: list[dict], summary: dict, out_dir) -> list:
    """The log-log scaling figure."""
    from ntklab.report.figures import scaling_figure

    return [
        scaling_figure(
            rows,
            summary["exponents"],
            cfg.fit.metric,
            out_dir / "scaling.png",
            title=f"{cfg.data.name}: {arch_label(cfg.arch)}",
        )
    ]
