"""Tidy results: one row per (experiment, method, n, width, seed, step, metric, value)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ntklab.config.sections import FitConfig
from ntklab.scaling import fit_with_ci, paired_difference

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


def _usable(grid: np.ndarray, table: np.ndarray, n_min: int) -> np.ndarray:
    """Grid points with a finite, positive loss for every repetition, at n ≥ n_min."""
    return np.all(np.isfinite(table), 0) & (np.nanmean(table, 0) > 0) & (grid >= n_min)


def fit_floor(fit: FitConfig, method: str, min_n: dict[str, int] | None = None) -> int:
    """Smallest n fitted for ``method``: ``fit.n_min`` (every method; below it the loss sits on
    its small-n plateau, which a single power law would misreport) or the method's own
    ``min_n[method]``, whichever is larger."""
    return max(fit.n_min or 0, (min_n or {}).get(method, 0))


def exponents(
    rows: list[dict[str, Any]], fit: FitConfig, seed: int, min_n: dict[str, int] | None = None
) -> dict[str, dict[str, Any]]:
    """α with its bootstrap CI, goodness of fit and fitted range (``fit_n_min``, ``fit_n_max``)
    for every method in ``rows`` (at least 2 grid points needed); ``min_n[method]`` restricts a
    method's fit to n ≥ that value (the after-kernel pre-trained on n₀ fits n ≥ n₀), as
    ``fit.n_min`` does every method's (:func:`fit_floor`)."""
    out: dict[str, dict[str, Any]] = {}
    methods = sorted({r["method"] for r in rows if r["metric"] == fit.metric})
    for m in methods:
        grid, table = loss_table(rows, m, fit.metric)
        usable = _usable(grid, table, fit_floor(fit, m, min_n))
        if usable.sum() < 2:
            continue
        res = fit_with_ci(
            grid[usable], table[:, usable], offset=fit.offset, n_boot=fit.bootstrap, ci=fit.ci, seed=seed
        )
        out[m] = res.as_dict()
    return out


def differences(
    rows: list[dict[str, Any]],
    fit: FitConfig,
    seed: int,
    reference: str = "nn",
    min_n: dict[str, int] | None = None,
    methods: list[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """``{"nn-entk": {"delta": α_nn − α_entk, "ci_low", "ci_high", "fit_n_min", "fit_n_max"}}``
    for every other method: a paired bootstrap over the (seed, n) cells both have, on the n
    range both are fitted on (:func:`ntklab.scaling.paired_difference`); ``methods`` limits the
    comparison to those."""
    present = {r["method"] for r in rows if r["metric"] == fit.metric} - {reference}
    methods = sorted(present if methods is None else present & set(methods))
    if not any(r["method"] == reference and r["metric"] == fit.metric for r in rows):
        return {}
    ref_grid, ref_table = loss_table(rows, reference, fit.metric)
    ref_seeds = sorted({r["seed"] for r in rows if r["method"] == reference and r["metric"] == fit.metric})
    out: dict[str, dict[str, Any]] = {}
    for m in methods:
        grid, table = loss_table(rows, m, fit.metric)
        seeds = sorted({r["seed"] for r in rows if r["method"] == m and r["metric"] == fit.metric})
        common_n = [n for n in grid if n in ref_grid and n >= fit_floor(fit, m, min_n)]
        common_s = [s for s in seeds if s in ref_seeds]
        if len(common_n) < 2 or not common_s:
            continue
        a = ref_table[
            np.ix_([ref_seeds.index(s) for s in common_s], [list(ref_grid).index(n) for n in common_n])
        ]
        b = table[np.ix_([seeds.index(s) for s in common_s], [list(grid).index(n) for n in common_n])]
        d = paired_difference(
            np.array(common_n), a, b, offset=fit.offset, n_boot=fit.bootstrap, ci=fit.ci, seed=seed
        )
        out[f"{reference}-{m}"] = d.as_dict()
    return out


def scaling_summary(
    rows: list[dict[str, Any]], fit: FitConfig, seed: int, min_n: dict[str, int] | None = None
) -> dict[str, Any]:
    """The summary's ``exponents`` and ``differences`` (to the network) of ``rows``."""
    return {
        "exponents": exponents(rows, fit, seed, min_n),
        "differences": differences(rows, fit, seed, min_n=min_n),
    }


def seed_means(rows: list[dict[str, Any]], by: str, **where: Any) -> dict[Any, float]:
    """{value of column ``by``: mean of the rows' values} over the rows whose columns equal
    ``where`` (e.g. ``seed_means(rows, "method", metric="test_mse", n=1024)``: each method's
    test MSE at n = 1024 averaged over repetitions), sorted by ``by``."""
    vals: dict[Any, list[float]] = {}
    for r in rows:
        if all(r[k] == v for k, v in where.items()):
            vals.setdefault(r[by], []).append(r["value"])
    return {k: float(np.mean(v)) for k, v in sorted(vals.items())}


BEST_AT_END = 0.9  # kept weights from the last 10 % of the steps: validation still improving


def training_summary(rows: list[dict[str, Any]], rule: str, validated: bool = True) -> dict[str, Any]:
    """How the networks (methods ``nn``, ``nn@…``) trained: the stated ``rule``, per method and n
    the mean final training loss and steps taken, and two lists of networks (method, n, seed):

    * ``still_falling``: the training loss was still falling when the planned steps ended;
    * ``improving_at_end``: with ``validated`` (early stopping on a validation split), the kept
      weights are from the last ``1 − BEST_AT_END`` of the steps taken, best_step ≥
      BEST_AT_END · steps: the validation loss was still improving when the step budget ran
      out. (A run that early stopping ended kept weights at least ``train.patience`` of its
      budget before its end, so it is never listed.)
    """
    out: dict[str, Any] = {"rule": rule, "per_n": {}, "still_falling": [], "improving_at_end": []}
    for r in rows:
        if not r["method"].split("@")[0] == "nn":
            continue
        entry = (
            out["per_n"].setdefault(r["method"], {}).setdefault(str(r["n"]), {"steps": [], "train_loss": []})
        )
        which = {"method": r["method"], "n": r["n"], "seed": r["seed"]}
        if r["metric"] == "train_loss":
            entry["train_loss"].append(r["value"])
            entry["steps"].append(r["step"])
        if r["metric"] == "still_falling" and r["value"] > 0:
            out["still_falling"].append(which)
        if (
            r["metric"] == "best_step"
            and validated
            and r["step"] > 0
            and r["value"] >= BEST_AT_END * r["step"]
        ):
            out["improving_at_end"].append(which)
    for per in out["per_n"].values():
        for n, e in per.items():
            per[n] = {k: float(np.mean(v)) for k, v in e.items() if v}
    return out
