"""Verdicts of ``width-scaling``: network against kernels, width by width (finding 2)."""

from __future__ import annotations

from typing import Any

from ntklab.report.verdicts.comparisons import (
    KERNELS,
    Verdict,
    kernel_vs_network,
    missing,
    training,
)


def width_scaling(summary: dict[str, Any]) -> list[Verdict]:
    """Network vs kernels, width by width, for methods keyed ``METHOD@TAG`` (finding 2).

    Plain keys (``nn``, ``entk``, ...) are compared as in data-scaling; keyed ones are
    compared within the same tag (``nn@w64`` with ``entk@w64``).
    """
    exps = summary.get("exponents", {})
    out: list[Verdict] = []
    tags = sorted({m.partition("@")[2] for m in exps}, key=lambda t: (len(t), t))
    for tag in tags:
        suffix = f"@{tag}" if tag else ""
        nn_key = f"nn{suffix}"
        if nn_key not in exps:
            continue
        for k in KERNELS:
            if f"{k}{suffix}" in exps:
                out.append(kernel_vs_network(summary, nn_key, f"{k}{suffix}", "width scaling"))
            elif suffix and k in exps and f"{nn_key}-{k}" in (summary.get("differences") or {}):
                out.append(kernel_vs_network(summary, nn_key, k, "width scaling"))
    return (
        out or [missing("width scaling", "no width has both a network and a kernel exponent")]
    ) + training(summary)
