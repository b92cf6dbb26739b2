"""Tidy results: one row per (experiment, method, n, width, seed, step, metric, value)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np

from ntklab.config import FitConfig
from ntklab.scaling import fit_with_ci

COLUMNS = ("experiment", "method", "n", "width", "seed", "step", "metric", "value")


def row(
    experiment: str, method: str, n: int, width: int, seed: int, step: int, metric: str, value: float
) -> dict[str, Any]:
    """One tidy row (step = -1 means 'end of training' / not applicable)."""
    return dict(
        zip(COLUMNS, (experiment, method, int(n), int(width), int(seed), int(step), metric, float(value)))
    )


def rows_from(
    experiment: str,
    method: str,
    width: int,
    seed: int,
    record: dict[str, Any],
    metrics: Iterable[str],
    step: int = -1,
) -> list[dict[str, Any]]:
    """Rows for the ``metrics`` of one record that has an ``n``."""
    return [
        row(experiment, method, record["n"], width, seed, step, m, record[m]) for m in metrics if m in record
    ]


def loss_table(rows: list[dict[str, Any]], method: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(grid (m,), losses (S, m)) of ``metric`` for ``method``; NaN where a seed lacks an n."""
    sel = [r for r in rows if r["method"] == method and r["metric"] == metric]
    grid = sorted({r["n"] for r in sel})
    seeds = sorted({r["seed"] for r in sel})
    table = np.full((len(seeds), len(grid)), np.nan)
    for r in sel:
        table[seeds.index(r["seed"]), grid.index(r["n"])] = r["value"]
    return np.array(grid), table


def exponents(rows: list[dict[str, Any]], fit: FitConfig, seed: int) -> dict[str, dict[str, float]]:
    """α with its bootstrap CI for every method in ``rows`` (at least 2 grid points needed)."""
    out: dict[str, dict[str, float]] = {}
    methods = sorted({r["method"] for r in rows if r["metric"] == fit.metric})
    for m in methods:
        grid, table = loss_table(rows, m, fit.metric)
        usable = np.all(np.isfinite(table), 0) & (np.nanmean(table, 0) > 0)
        if usable.sum() < 2:
            continue
        res = fit_with_ci(
            grid[usable], table[:, usable], offset=fit.offset, n_boot=fit.bootstrap, ci=fit.ci, seed=seed
        )
        out[m] = res.as_dict()
    return out


def by_method(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped by method."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[r["method"]].append(r)
    return dict(groups)
