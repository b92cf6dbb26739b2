"""Figures of the ``kernel-evolution`` experiment, drawn from its tidy rows.

* ``kernel_motion.png``: angle to init θ(P_0, P_t) (the "barely moves" threshold dashed);
  angular velocity ω = θ(P_{t_i}, P_{t_{i+1}}) / (e_{i+1} − e_i) on the evenly spaced grid,
  drawn at each interval's midpoint, with the half speeds ω̄₁, ω̄₂ as segments over their
  halves (linear epoch axis: equal intervals); the angle θ(P_t, P_{10t}) of each decade of
  training at the decade's geometric middle (log epoch axis);
* ``alignment.png``: centered kernel–target alignment of P_t against epochs;
* ``kt_regression.png``: test MSE and 0-1 error of kernel regression with K_t (a fixed kernel,
  n = regress_n) next to the network's own at t, and the exponent α(t) of K_t regression over
  the n grid with its CI;
* ``spectrum.png``: top eigenvalues and effective rank (Σλ)² / Σλ² of P_t.

Epoch axes other than the log-log ones are symmetric-log (linear below the first checkpoint)
so that initialization (epoch 0) is shown. LR-schedule milestones are dotted vertical lines.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ntklab.experiments.kernel_motion import LAZY_ANGLE  # noqa: E402
from ntklab.report.figures import save  # noqa: E402

Series = dict[int, tuple[np.ndarray, np.ndarray]]


def epoch_map(rows: list[dict[str, Any]]) -> dict[tuple[int, int], float]:
    """(seed, step) -> epoch from the ``epoch`` rows."""
    return {(r["seed"], r["step"]): r["value"] for r in rows if r["metric"] == "epoch"}


def series(rows: list[dict[str, Any]], metric: str, n: int | None = None) -> Series:
    """seed -> (epochs, values) of ``metric`` (at training-set size ``n`` when given), by step."""
    epochs = epoch_map(rows)
    pts: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for r in rows:
        if r["metric"] == metric and (n is None or r["n"] == n):
            pts[r["seed"]].append((r["step"], r["value"]))
    out: Series = {}
    for seed, sv in pts.items():
        sv.sort()
        out[seed] = (
            np.array([epochs[(seed, s)] for s, _ in sv]),
            np.array([v for _, v in sv], dtype=float),
        )
    return out


def interval_series(rows: list[dict[str, Any]], summary: dict[str, Any]) -> Series:
    """seed -> (midpoints in epochs, ω) of the grid intervals (a row sits at its interval's start)."""
    grid = summary.get("checkpoints", {}).get("grid_steps", [])
    epochs = epoch_map(rows)
    out: Series = {}
    for seed, (_, omega) in series(rows, "angular_velocity").items():
        steps = sorted(r["step"] for r in rows if r["metric"] == "angular_velocity" and r["seed"] == seed)
        done = [g for g in grid if (seed, g) in epochs]  # the grid checkpoints this seed has
        ends = [next((g for g in done if g > s), s) for s in steps]
        mids = [(epochs[(seed, s)] + epochs[(seed, e)]) / 2 for s, e in zip(steps, ends)]
        out[seed] = (np.array(mids), omega)
    return out


def _linthresh(rows: list[dict[str, Any]]) -> float:
    """The power of ten at or below the first positive epoch (the symlog axis is linear below)."""
    pos = [r["value"] for r in rows if r["metric"] == "epoch" and r["value"] > 0]
    return 10.0 ** np.floor(np.log10(min(pos))) if pos else 1.0


def _epoch_axis(ax: plt.Axes, rows: list[dict[str, Any]], log: bool = False) -> None:
    if log:
        ax.set_xscale("log")
    else:
        ax.set_xscale("symlog", linthresh=_linthresh(rows))
        ax.set_xlim(left=0)
    ax.set_xlabel("epoch")
    ax.grid(True, which="both", alpha=0.3)


def _milestones(ax: plt.Axes, summary: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    epochs = epoch_map(rows)
    for t in summary.get("checkpoints", {}).get("milestone_steps", []):
        es = [e for (_, s), e in epochs.items() if s == t]
        if es:
            ax.axvline(es[0], color="gray", ls=":", lw=1)


def _plot(ax: plt.Axes, data: Series, color: str, label: str, positive: bool = False, **kw: Any) -> None:
    for k, (_, (x, y)) in enumerate(sorted(data.items())):
        keep = np.isfinite(y) & ((x > 0) & (y > 0) if positive else np.ones_like(y, bool))
        alpha = 1.0 if len(data) == 1 else 0.7
        ax.plot(x[keep], y[keep], color=color, alpha=alpha, label=label if k == 0 else None, **kw)


def _half_segments(ax: plt.Axes, summary: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """ω̄₁ over the first half of training and ω̄₂ over the second, as horizontal segments."""
    ev = summary.get("evolution", {})
    end = max((r["value"] for r in rows if r["metric"] == "epoch"), default=0.0)
    for key, (a, b), style in (
        ("angular_speed_first_half", (0.0, end / 2), "-"),
        ("angular_speed_second_half", (end / 2, end), "--"),
    ):
        v = ev.get(key)
        if isinstance(v, (int, float)) and np.isfinite(v) and v > 0:
            ax.plot([a, b], [v, v], color="k", ls=style, lw=1, label=f"ω̄ {key.split('_')[2]} half")


def kernel_motion_figure(rows: list[dict[str, Any]], summary: dict[str, Any], path: Path, title: str) -> Path:
    """Angle to init; ω on the even grid (linear epochs); angle per decade (log epochs)."""
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(13, 3.8))
    _plot(a1, series(rows, "angle_to_init"), "C1", "θ(K_0, K_t)", marker="o", ms=3)
    a1.axhline(LAZY_ANGLE, color="gray", ls="--", lw=1, label="barely moves below")
    a1.set_ylabel("angle to init (rad)")
    _epoch_axis(a1, rows)
    _plot(a2, interval_series(rows, summary), "C4", "ω = θ / dt (equal dt)", positive=True, marker="s", ms=3)
    _half_segments(a2, summary, rows)
    a2.set_yscale("log")
    a2.set_ylabel("angular velocity (rad/epoch)")
    a2.set_xlabel("epoch")
    a2.set_xlim(left=0)
    a2.grid(True, which="both", alpha=0.3)
    decades = summary.get("evolution", {}).get("decade_angles", [])
    if decades:
        mids = [np.sqrt(d["from_epoch"] * d["to_epoch"]) for d in decades]
        a3.plot(mids, [d["angle"] for d in decades], "D-", color="C3", label="θ(K_t, K_10t), mean")
    a3.set_ylabel("angle per decade of training (rad)")
    a3.set_ylim(bottom=0)
    _epoch_axis(a3, rows, log=True)
    for ax in (a1, a2, a3):
        _milestones(ax, summary, rows)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return save(fig, path)


def alignment_figure(rows: list[dict[str, Any]], summary: dict[str, Any], path: Path, title: str) -> Path:
    """Centered kernel–target alignment against epochs."""
    fig, ax = plt.subplots(figsize=(5, 3.8))
    _plot(ax, series(rows, "alignment"), "C2", "eNTK K_t", marker="o", ms=3)
    ax.set_ylabel("centered kernel-target alignment")
    _epoch_axis(ax, rows)
    _milestones(ax, summary, rows)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    return save(fig, path)


def kt_regression_figure(rows: list[dict[str, Any]], summary: dict[str, Any], path: Path, title: str) -> Path:
    """Test loss and error of kernel regression with K_t next to the network's."""
    ev = summary.get("evolution", {})
    n_reg, n = ev.get("regress_n"), ev.get("n", "?")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, metric in zip(axes, ("test_mse", "test_error")):
        kt = series(rows, f"kt_{metric}", n_reg)
        _plot(ax, kt, "C1", f"kernel regression, K_t (n={n_reg})", marker="s", ms=3)
        _plot(ax, series(rows, f"nn_{metric}"), "C0", f"network at t (n={n})", marker="o", ms=3)
        ax.set_ylabel(metric.replace("_", " "))
        if metric == "test_mse":
            ax.set_yscale("log")
        _epoch_axis(ax, rows)
        _milestones(ax, summary, rows)
        ax.legend(fontsize=7)
    ax = axes[2]
    exps = [e for e in ev.get("kt_exponents", []) if np.isfinite(e["alpha"])]
    if exps:
        x = np.array([e["epoch"] for e in exps])
        ax.plot(x, [e["alpha"] for e in exps], "o-", color="C1", ms=3, label="α(t) of K_t regression")
        lo, hi = ([np.nan if e[k] is None else e[k] for e in exps] for k in ("ci_low", "ci_high"))
        ax.fill_between(x, lo, hi, color="C1", alpha=0.2, label="CI")
        ax.legend(fontsize=7)
    grid = ev.get("kt_grid") or []
    span = f"n = {grid[0]}–{grid[-1]}" if grid else ""
    ax.set_ylabel(f"scaling exponent α ({span})")
    _epoch_axis(ax, rows)
    _milestones(ax, summary, rows)
    fig.suptitle(title, fontsize=9)
    return save(fig, path)


def spectrum_figure(rows: list[dict[str, Any]], summary: dict[str, Any], path: Path, title: str) -> Path:
    """Top eigenvalues and effective rank of the probe kernel against epochs."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.8))
    eigs = sorted(
        {r["metric"] for r in rows if r["metric"].startswith("eig_")}, key=lambda m: int(m.split("_")[1])
    )
    cmap = plt.get_cmap("viridis")
    for k, m in enumerate(eigs):
        _plot(a1, series(rows, m), cmap(k / max(len(eigs) - 1, 1)), f"λ{m.split('_')[1]}", positive=False)
    a1.set_yscale("log")
    a1.set_ylabel("eigenvalue of probe kernel")
    if eigs:
        a1.legend(fontsize=6, ncol=2)
    _plot(a2, series(rows, "eff_rank"), "C4", "effective rank", marker="o", ms=3)
    a2.set_ylabel("(Σλ)² / Σλ²")
    for ax in (a1, a2):
        _epoch_axis(ax, rows)
        _milestones(ax, summary, rows)
    fig.suptitle(title, fontsize=9)
    return save(fig, path)


def evolution_figures(
    rows: list[dict[str, Any]], summary: dict[str, Any], out_dir: Path, title: str = ""
) -> list[Path]:
    """All four figures into ``out_dir`` (none when there are no rows)."""
    if not rows:
        return []
    return [
        kernel_motion_figure(rows, summary, out_dir / "kernel_motion.png", title),
        alignment_figure(rows, summary, out_dir / "alignment.png", title),
        kt_regression_figure(rows, summary, out_dir / "kt_regression.png", title),
        spectrum_figure(rows, summary, out_dir / "spectrum.png", title),
    ]
