"""Paper-ready figures (matplotlib, Agg backend, PNG at 200 dpi)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ntklab.experiments.tidy import loss_table  # noqa: E402
from ntklab.report.labels import method_label  # noqa: E402

STYLE = {"nn": ("C0", "o"), "entk": ("C1", "s"), "ntk": ("C2", "^"), "nngp": ("C3", "v")}


def style_of(method: str, i: int) -> tuple[str, str]:
    return STYLE.get(method, (f"C{(i + 4) % 10}", "D"))


def save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=200)
    plt.close(fig)
    return path


def scaling_axes(
    ax: plt.Axes,
    rows: list[dict[str, Any]],
    fits: dict[str, dict[str, float]],
    metric: str,
    methods: list[str] | None = None,
) -> None:
    """Loss vs n, one line per method: mean ± std over seeds, fitted power law dashed."""
    methods = methods or sorted(
        {r["method"] for r in rows if r["metric"] == metric}, key=lambda m: (m not in STYLE, m)
    )
    for i, m in enumerate(methods):
        grid, table = loss_table(rows, m, metric)
        if not len(grid):
            continue
        color, marker = style_of(m, i)
        mean = np.nanmean(table, 0)
        err = np.nanstd(table, 0) if table.shape[0] > 1 else None
        label = method_label(m)
        if m in fits:
            f = fits[m]
            label += f"  {alpha_label(f)}"
            ax.plot(
                grid, f["a"] * grid ** (-f["alpha"]) + f.get("c", 0.0), "--", color=color, lw=1, alpha=0.8
            )
        ax.errorbar(grid, mean, yerr=err, color=color, marker=marker, ms=4, lw=1.5, capsize=2, label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("training samples n")
    ax.set_ylabel(metric.replace("_", " "))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)


def scaling_figure(
    rows: list[dict[str, Any]], fits: dict[str, dict[str, float]], metric: str, path: Path, title: str = ""
) -> Path:
    """The log-log data-scaling figure of one experiment."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    scaling_axes(ax, rows, fits, metric)
    ax.set_title(title, fontsize=9)
    return save(fig, path)


def alpha_label(f: dict) -> str:
    """``α=0.420 [0.370, 0.470]``, or ``α=0.420 (no CI)`` when the fit has no interval."""
    if f.get("ci_low") is None or f.get("ci_high") is None:
        return f"α={f['alpha']:.3f} (no CI)"
    return f"α={f['alpha']:.3f} [{f['ci_low']:.3f}, {f['ci_high']:.3f}]"


def ci_bounds(f: dict) -> tuple[float, float]:
    """(low, high) of a fit's interval for drawing; α itself where there is none."""
    lo, hi = f.get("ci_low"), f.get("ci_high")
    return (f["alpha"] if lo is None else lo, f["alpha"] if hi is None else hi)
