"""Figures of the ``kernel-evolution`` experiment, drawn from its tidy rows.

* ``kernel_motion.png``: distance to init S(P_0, P_t), velocity
  v(t_i) = S(P_{t_i}, P_{t_{i+1}}) / (e_{i+1} − e_i) and angular velocity
  arccos(1 − S(P_{t_i}, P_{t_{i+1}})) / (e_{i+1} − e_i) against epochs, log-log; a velocity is
  drawn at its interval's midpoint (e_i + e_{i+1}) / 2, with the 10%-of-peak level dashed;
* ``alignment.png``: centered kernel–target alignment of P_t against epochs;
* ``kt_regression.png``: test MSE and 0-1 error of kernel regression with K_t (a fixed kernel)
  next to the network's own at t;
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

from ntklab.report.figures import save  # noqa: E402

Series = dict[int, tuple[np.ndarray, np.ndarray]]


def epoch_map(rows: list[dict[str, Any]]) -> dict[tuple[int, int], float]:
    """(seed, step) -> epoch from the ``epoch`` rows."""
    return {(r["seed"], r["step"]): r["value"] for r in rows if r["metric"] == "epoch"}


def series(rows: list[dict[str, Any]], metric: str) -> Series:
    """seed -> (epochs, values) of ``metric``, sorted by step."""
    epochs = epoch_map(rows)
    pts: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for r in rows:
        if r["metric"] == metric:
            pts[r["seed"]].append((r["step"], r["value"]))
    out: Series = {}
    for seed, sv in pts.items():
        sv.sort()
        out[seed] = (
            np.array([epochs[(seed, s)] for s, _ in sv]),
            np.array([v for _, v in sv], dtype=float),
        )
    return out


def velocity_series(rows: list[dict[str, Any]], metric: str = "velocity") -> Series:
    """seed -> (interval midpoints in epochs, values of the interval ``metric``)."""
    epochs = epoch_map(rows)
    out: Series = {}
    for seed, (_, vel) in series(rows, metric).items():
        steps = sorted(s for (sd, s) in epochs if sd == seed)
        e = np.array([epochs[(seed, s)] for s in steps])
        mids = (e[:-1] + e[1:]) / 2
        out[seed] = (mids[: len(vel)], vel)
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


def kernel_motion_figure(rows: list[dict[str, Any]], summary: dict[str, Any], path: Path, title: str) -> Path:
    """Distance to init, velocity and angular velocity against epochs (log-log)."""
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(13, 3.8))
    _plot(a1, series(rows, "distance_to_init"), "C1", "S(K_0, K_t)", positive=True, marker="o", ms=3)
    a1.set_ylabel("kernel distance to init")
    ev = summary.get("evolution", {})
    panels = (
        (a2, "velocity", "v = S(K_t, K_t+dt) / dt", "kernel velocity (1/epoch)", "C3"),
        (a3, "angular_velocity", "ω = arccos(1 − S) / dt", "angular velocity (rad/epoch)", "C4"),
    )
    for ax, metric, label, ylabel, color in panels:
        _plot(ax, velocity_series(rows, metric), color, label, positive=True, marker="s", ms=3)
        peak = ev.get(f"{metric}_peak")
        if peak is not None and np.isfinite(peak) and peak > 0:
            ax.axhline(0.1 * peak, color=color, ls="--", lw=1, alpha=0.6, label="10% of peak")
        ax.set_ylabel(ylabel)
    for ax in (a1, a2, a3):
        ax.set_yscale("log")
        _epoch_axis(ax, rows, log=True)
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
    n_reg = summary.get("evolution", {}).get("regress_n", "?")
    n = summary.get("evolution", {}).get("n", "?")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, metric in zip(axes, ("test_mse", "test_error")):
        _plot(ax, series(rows, f"kt_{metric}"), "C1", f"kernel regression, K_t (n={n_reg})", marker="s", ms=3)
        _plot(ax, series(rows, f"nn_{metric}"), "C0", f"network at t (n={n})", marker="o", ms=3)
        ax.set_ylabel(metric.replace("_", " "))
        if metric == "test_mse":
            ax.set_yscale("log")
        _epoch_axis(ax, rows)
        _milestones(ax, summary, rows)
        ax.legend(fontsize=7)
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
