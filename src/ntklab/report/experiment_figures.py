"""Figures of the ``width-scaling`` and ``pretrained-kernel`` experiments (PNG, 200 dpi).

Built on the helpers of :mod:`ntklab.report.figures` (``scaling_axes``, ``save``, the method
styles; names from :mod:`ntklab.report.labels`), so every figure of a report looks alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ntklab.experiments.tidy import loss_table
from ntklab.report.figures import ci_bounds, plt, save, scaling_axes, style_of
from ntklab.report.labels import method_label

REFERENCE = "ntk"


def width_colors(widths: Sequence[int]) -> dict[int, Any]:
    """One viridis color per width, narrow (dark) to wide (light)."""
    cmap = plt.get_cmap("viridis")
    k = max(len(widths) - 1, 1)
    return {w: cmap(0.85 * i / k) for i, w in enumerate(sorted(widths))}


def _curve(
    ax: plt.Axes,
    rows: list[dict[str, Any]],
    fits: dict[str, dict[str, float]],
    metric: str,
    method: str,
    color: Any,
    marker: str,
    label: str,
) -> None:
    """Mean ± std over seeds of one method, its fitted power law dashed, α in the label."""
    grid, table = loss_table(rows, method, metric)
    if not len(grid):
        return
    if method in fits:
        f = fits[method]
        label += f"  α={f['alpha']:.3f}"
        ax.plot(grid, f["a"] * grid ** (-f["alpha"]) + f.get("c", 0.0), "--", color=color, lw=1, alpha=0.8)
    err = np.nanstd(table, 0) if table.shape[0] > 1 else None
    ax.errorbar(
        grid, np.nanmean(table, 0), yerr=err, color=color, marker=marker, ms=4, lw=1.5, capsize=2, label=label
    )


def width_scaling_figure(
    rows: list[dict[str, Any]],
    fits: dict[str, dict[str, float]],
    metric: str,
    widths: Sequence[int],
    path: Path,
    title: str = "",
) -> Path:
    """Test loss vs n, one panel per method (network, eNTK at init), one curve per width; the
    infinite NTK (one curve) repeated in every panel as the black reference."""
    present = {r["method"] for r in rows if r["metric"] == metric}
    bases = [b for b in ("nn", "entk") if any(m.startswith(f"{b}@w") for m in present)] or [REFERENCE]
    colors = width_colors(widths)
    fig, axes = plt.subplots(1, len(bases), figsize=(5.2 * len(bases), 4.2), sharey=True, squeeze=False)
    for ax, base in zip(axes[0], bases):
        for w in sorted(widths):
            _curve(ax, rows, fits, metric, f"{base}@w{w}", colors[w], "o", f"width {w}")
        for ref in ("ntk", "nngp"):
            if ref in present:
                _curve(ax, rows, fits, metric, ref, "k" if ref == "ntk" else "0.5", "^", method_label(ref))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("training samples n")
        ax.set_title(f"{method_label(base)}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(metric.replace("_", " "))
    if title:
        fig.suptitle(title, fontsize=9)
    return save(fig, path)


def alpha_width_figure(
    fits: dict[str, dict[str, float]], widths: Sequence[int], path: Path, title: str = ""
) -> Path:
    """Scaling exponent α (with its CI) vs width for the network and its eNTK at init; the
    infinite NTK's α as a horizontal line with its CI band."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, base in enumerate(("nn", "entk")):
        ws = [w for w in sorted(widths) if f"{base}@w{w}" in fits]
        if not ws:
            continue
        f = [fits[f"{base}@w{w}"] for w in ws]
        a = np.array([x["alpha"] for x in f])
        err = np.array([[x["alpha"] - ci_bounds(x)[0] for x in f], [ci_bounds(x)[1] - x["alpha"] for x in f]])
        color, marker = style_of(base, i)
        ax.errorbar(
            ws, a, yerr=np.clip(err, 0, None), color=color, marker=marker, capsize=3, label=method_label(base)
        )
    for ref, color in (("ntk", "k"), ("nngp", "0.5")):
        if ref in fits:
            f = fits[ref]
            ax.axhline(
                f["alpha"], color=color, ls="--", lw=1.2, label=f"{method_label(ref)}  α={f['alpha']:.3f}"
            )
            ax.axhspan(*ci_bounds(f), color=color, alpha=0.1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("width")
    ax.set_ylabel("scaling exponent α  (L ≈ a·n^-α)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    return save(fig, path)


def distance_width_figure(
    rows: list[dict[str, Any]],
    metric: str,
    slope: dict[str, float] | None,
    path: Path,
    title: str = "",
) -> Path:
    """Relative Frobenius distance ‖Θ_w − Θ_∞‖_F / ‖Θ_∞‖_F vs width on log-log axes: one dot per
    repetition, the mean, and the fitted line c·w^s with its slope s and CI."""
    sel = [r for r in rows if r["metric"] == metric]
    widths = np.array(sorted({r["width"] for r in sel}))
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.scatter(
        [r["width"] for r in sel], [r["value"] for r in sel], s=12, color="C1", alpha=0.5, label="repetitions"
    )
    means = [np.mean([r["value"] for r in sel if r["width"] == w]) for w in widths]
    ax.plot(widths, means, "o-", color="C1", lw=1.5, label="mean")
    if slope is not None:
        ax.plot(
            widths,
            slope["c"] * widths.astype(float) ** slope["slope"],
            "k--",
            lw=1,
            label=f"fit: slope {slope['slope']:.2f}"
            + (
                " (no CI)" if slope["ci_low"] is None else f" [{slope['ci_low']:.2f}, {slope['ci_high']:.2f}]"
            ),
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("width")
    ax.set_ylabel("‖eNTK − NTK‖_F / ‖NTK‖_F at init")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    return save(fig, path)


def _method_order(m: str) -> tuple[int, int, str]:
    base = m.split("@")[0]
    order = {"nn": 0, "entk": 1, "ntk": 2, "nngp": 3, "after_kernel": 4}.get(base, 5)
    tail = m.split("=", 1)[1] if "=" in m else ""
    return order, (int(tail) if tail.isdigit() else 1 << 40), m


def pretrained_kernel_figure(
    rows: list[dict[str, Any]],
    fits: dict[str, dict[str, float]],
    metric: str,
    n0s: Sequence[int],
    path: Path,
    title: str = "",
) -> Path:
    """Left: test loss vs n of every method (network, eNTK at init, NTK, after-kernels), the
    pre-training sizes n₀ marked by dotted lines. Right: α with its CI per method."""
    methods = sorted({r["method"] for r in rows if r["metric"] == metric}, key=_method_order)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.6, 1]})
    scaling_axes(ax, rows, fits, metric, methods)
    for n0 in n0s:
        ax.axvline(n0, color="0.4", ls=":", lw=1)
        ax.annotate(
            f" n₀={n0}", (n0, 0.02), xycoords=("data", "axes fraction"), fontsize=7, ha="left", va="bottom"
        )
    ax.set_title(title, fontsize=9)
    fitted = [m for m in methods if m in fits]
    y = np.arange(len(fitted))
    for i, m in enumerate(fitted):
        f = fits[m]
        color, marker = style_of(m, methods.index(m))
        lo, hi = max(f["alpha"] - ci_bounds(f)[0], 0.0), max(ci_bounds(f)[1] - f["alpha"], 0.0)
        bx.errorbar(f["alpha"], y[i], xerr=[[lo], [hi]], color=color, marker=marker, capsize=3)
    bx.set_yticks(y, [method_label(m) for m in fitted], fontsize=7)
    bx.invert_yaxis()
    if "nn" in fits:
        bx.axvline(fits["nn"]["alpha"], color=style_of("nn", 0)[0], ls="--", lw=1)
    bx.set_xlabel("scaling exponent α (bootstrap CI)")
    bx.grid(True, axis="x", alpha=0.3)
    return save(fig, path)
