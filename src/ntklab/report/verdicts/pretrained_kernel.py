"""Verdicts of ``pretrained-kernel``: the after-kernel against the eNTK at init and the network
(finding 3)."""

from __future__ import annotations

from typing import Any

from ntklab.report.labels import method_label
from ntklab.report.verdicts.comparisons import (
    Verdict,
    alphas_clause,
    at_largest_n,
    ci_phrase,
    compare_by_difference,
    compare_exponents,
    kernel_vs_network,
    missing,
    n_range,
    training,
)


def pretrained_kernel(summary: dict[str, Any]) -> list[Verdict]:
    """After-kernel vs eNTK at init and vs the network (finding 3)."""
    exps = summary.get("exponents", {})
    after = sorted((m for m in exps if m.startswith("after_kernel")), key=lambda m: (m.endswith("=n"), m))
    if not after:
        return [missing("pre-trained kernel", "no after-kernel has a fitted exponent")]
    where = ", ".join(x for x in (ci_phrase(summary), n_range(summary)) if x)
    out: list[Verdict] = []
    for m in after:
        label = method_label(m)
        if "entk" in exps:
            clauses = dict(
                if_a_above=(
                    "its loss falls more slowly with n than the eNTK at init's on this range "
                    "(an exponent, not a loss: the after-kernel can still be better at every n)."
                ),
                if_b_above="training moved the kernel towards the task and made its data scaling steeper.",
                if_overlap="not distinguishable at this n range; training did not measurably change the kernel's data scaling.",
            )
            diff = (summary.get("differences") or {}).get(f"entk-{m}")
            if diff is not None:
                rng = f"n = {diff['fit_n_min']}–{diff['fit_n_max']}"
                at = ", ".join(x for x in (ci_phrase(summary), rng) if x)
                text, status = compare_by_difference(method_label("entk"), label, diff, where=at, **clauses)
                text += alphas_clause(exps, "entk", m)
            else:
                text, status = compare_exponents(
                    method_label("entk"), exps["entk"], label, exps[m], where=where, **clauses
                )
            out.append(
                Verdict(f"{label} vs eNTK at init", text, "info" if status != "indistinguishable" else status)
            )
        if "nn" in exps:
            out.append(kernel_vs_network(summary, "nn", m, "pre-trained kernel"))
    return out + at_largest_n(summary) + training(summary)
