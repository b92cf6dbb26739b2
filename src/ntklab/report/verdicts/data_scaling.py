"""Verdicts of ``data-scaling``: the network's α against each kernel's (finding 1)."""

from __future__ import annotations

from typing import Any

from ntklab.report.verdicts.comparisons import (
    KERNELS,
    Verdict,
    at_largest_n,
    kernel_vs_network,
    missing,
    training,
)


def data_scaling(summary: dict[str, Any]) -> list[Verdict]:
    """Network vs each kernel of a data-scaling summary (finding 1)."""
    exps = summary.get("exponents", {})
    if "nn" not in exps:
        return [
            missing(
                "data scaling", "the network has no fitted exponent (fewer than two grid points finished)"
            )
        ]
    out = [kernel_vs_network(summary, "nn", k, "data scaling") for k in KERNELS if k in exps]
    if not out:
        out.append(missing("data scaling", "no kernel has a fitted exponent"))
    return out + at_largest_n(summary) + training(summary)
