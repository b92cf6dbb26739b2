"""The sentences every experiment's verdicts are built from.

Every sentence states the measured numbers it rests on, formatted by
:mod:`ntklab.report.formatting` (the report renders the same numbers with the same functions).

A kernel's exponent is compared with the network's through the paired bootstrap interval of
their difference Δα = α_nn − α_kernel (summary ``differences``, :mod:`ntklab.scaling`): an
interval above 0 means the network's law is steeper, below 0 the kernel's; an interval that
contains 0 means the two are *not distinguishable at this n range*, which is a statement about
the measurement, not evidence that they are equal. Summaries without ``differences`` fall back
to comparing the two marginal intervals. A fit flagged ``fit_ok: false`` is named in the
sentence: its curve bends, and one slope misreports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ntklab.report.formatting import ci_level, fmt_alpha, fmt_exp, fmt_num
from ntklab.report.labels import method_label

KERNELS = ("entk", "ntk", "nngp")


@dataclass(frozen=True)
class Verdict:
    """One finding in one sentence (or two).

    Attributes
    ----------
    finding : str
        Which question it answers, e.g. ``"eNTK at init vs network (data scaling)"``.
    text : str
        The sentence(s), with the numbers they rest on.
    status : str
        ``"explains"``, ``"does-not-explain"``, ``"indistinguishable"`` or ``"info"``; the report
        uses it for colour only.
    """

    finding: str
    text: str
    status: str


def possessive(label: str) -> str:
    """``network's``, ``eNTK at init's``; a label ending in s takes the bare apostrophe."""
    return f"{label}'" if label.endswith("s") else f"{label}'s"


def alphas_clause(exps: dict[str, Any], *methods: str) -> str:
    """`` (network's α = 0.328 [0.301, 0.354], eNTK at init's α = ….)``: the exponents a
    paired-difference sentence compares, each over its own fitted range."""
    return " (" + ", ".join(f"{possessive(method_label(m))} {fmt_alpha(exps[m])}" for m in methods) + ".)"


def n_range(summary: dict[str, Any]) -> str:
    """``n = 32–256`` from the summary's ``n_grid`` (empty when unknown)."""
    grid = summary.get("n_grid") or []
    return f"n = {min(grid)}–{max(grid)}" if grid else ""


def ci_phrase(summary: dict[str, Any]) -> str:
    """``95% CIs``: the level of the summary's intervals, for a sentence."""
    return f"{ci_level(summary)} CIs"


def has_finite(e: dict[str, Any], *keys: str) -> bool:
    """True when every one of ``keys`` of ``e`` is a finite number."""
    return all(isinstance(e.get(k), (int, float)) and math.isfinite(e[k]) for k in keys)


def compare_exponents(
    a_name: str,
    a: dict[str, Any],
    b_name: str,
    b: dict[str, Any],
    *,
    where: str,
    if_a_above: str,
    if_b_above: str,
    if_overlap: str,
) -> tuple[str, str]:
    """Sentence and status comparing exponent ``a`` with ``b`` through their CIs.

    ``a`` is steeper when ``a.ci_low > b.ci_high``, ``b`` when ``b.ci_low > a.ci_high``; otherwise
    the CIs overlap (or one is missing) and the exponents are not distinguishable. The three
    ``if_*`` clauses end the sentence in each case; status is ``"does-not-explain"`` when ``a``
    (the network) is steeper, ``"indistinguishable"`` on overlap, else ``"info"``.
    """
    pa, pb = f"{possessive(a_name)} exponent {fmt_alpha(a)}", f"{possessive(b_name)} {fmt_alpha(b)}"
    paren = f" ({where})" if where else ""
    if not (has_finite(a, "alpha", "ci_low", "ci_high") and has_finite(b, "alpha", "ci_low", "ci_high")):
        return (f"The {pa} and the {pb}{paren} lack a confidence interval: {if_overlap}", "indistinguishable")
    if a["ci_low"] > b["ci_high"]:
        return (f"The {pa} is above the {pb}{paren}: {if_a_above}", "does-not-explain")
    if b["ci_low"] > a["ci_high"]:
        return (f"The {pa} is below the {pb}{paren}: {if_b_above}", "info")
    return (
        f"The {pa} and the {pb} have overlapping CIs{paren}: {if_overlap}",
        "indistinguishable",
    )


def compare_by_difference(
    a_name: str,
    b_name: str,
    diff: dict[str, Any],
    *,
    where: str,
    if_a_above: str,
    if_b_above: str,
    if_overlap: str,
) -> tuple[str, str]:
    """Sentence and status from the paired bootstrap CI of Δ = α_a − α_b (``differences``).

    Δ's interval above 0: ``a`` (the network) scales better, status ``"does-not-explain"``;
    below 0: ``b`` does, ``"info"``; containing 0 (or no interval): not distinguishable.
    """
    d = f"Δα = α({a_name}) − α({b_name}) = {fmt_exp(diff.get('delta'))}"
    paren = f" ({where})" if where else ""
    if not has_finite(diff, "delta", "ci_low", "ci_high"):
        return (
            f"{d} has no confidence interval (too few seeds or grid points){paren}: {if_overlap}",
            "indistinguishable",
        )
    d += f" [{fmt_exp(diff['ci_low'])}, {fmt_exp(diff['ci_high'])}]"
    if diff["ci_low"] > 0:
        return (f"{d}, paired CI above 0{paren}: {if_a_above}", "does-not-explain")
    if diff["ci_high"] < 0:
        return (f"{d}, paired CI below 0{paren}: {if_b_above}", "info")
    return (f"{d}, paired CI contains 0{paren}: {if_overlap}", "indistinguishable")


def bends(exps: dict[str, Any], *keys: str) -> str:
    """A clause naming the fits flagged as not a power law over their range (empty if none)."""
    bent = [method_label(k) for k in keys if exps.get(k, {}).get("fit_ok") is False]
    if not bent:
        return ""
    return (
        f" Caution: the {' and the '.join(bent)} curve bends over this range (fit_ok false), so one "
        "exponent summarizes it poorly; read the curves."
    )


def kernel_vs_network(summary: dict[str, Any], nn_key: str, kernel: str, context: str) -> Verdict:
    """Network vs kernel: the paired difference when the summary has it, else the two CIs."""
    exps = summary["exponents"]
    k_label = method_label(kernel)
    diff = (summary.get("differences") or {}).get(f"{nn_key}-{kernel}")
    rng = n_range(summary)
    if diff is not None and diff.get("fit_n_min"):
        rng = f"n = {diff['fit_n_min']}–{diff['fit_n_max']}"
    where = ", ".join(x for x in (ci_phrase(summary), rng) if x)
    clauses = dict(
        if_a_above=f"the {k_label} does not explain the network's data scaling.",
        if_b_above=f"the {k_label} scales better than the trained network at this n range.",
        if_overlap=f"not distinguishable at this n range; the {k_label} may explain the network's data scaling here.",
    )
    if diff is not None:
        text, status = compare_by_difference(method_label(nn_key), k_label, diff, where=where, **clauses)
        text += alphas_clause(exps, nn_key, kernel)
    else:
        text, status = compare_exponents(
            method_label(nn_key), exps[nn_key], k_label, exps[kernel], where=where, **clauses
        )
    return Verdict(f"{k_label} vs network ({context})", text + bends(exps, nn_key, kernel), status)


def _networks(which: list[dict[str, Any]]) -> str:
    """``n = 512 seed 0, ...`` for at most six networks."""
    where = ", ".join(f"n = {f['n']} seed {f['seed']}" for f in which[:6])
    return where + (f" and {len(which) - 6} more" if len(which) > 6 else "")


def training(summary: dict[str, Any]) -> list[Verdict]:
    """How the networks were trained: the rule, and any network still improving at its end
    (training loss still falling, or validation loss still improving when the steps ran out)."""
    tr = summary.get("training") or {}
    if not tr:
        return []
    falling, improving = tr.get("still_falling") or [], tr.get("improving_at_end") or []
    rule = tr.get("rule", "")
    found = []
    if falling:
        found.append(
            f"{len(falling)} ended training with the training loss still falling ({_networks(falling)})"
        )
    if improving:
        found.append(
            f"{len(improving)} kept weights from the last 10 % of their steps, the validation loss still "
            f"improving when the step budget ran out ({_networks(improving)})"
        )
    if found:
        text = (
            f"Of the networks, {'; '.join(found)}: they are under-trained, so their test loss overstates "
            f"what the network can do; raise train.epochs (or train.steps) until it stops changing. {rule}"
        )
        return [Verdict("network training", text.strip(), "does-not-explain")]
    return [
        Verdict(
            "network training",
            f"Every network's training loss had stopped falling, and none was still improving on "
            f"validation when its steps ran out. {rule}".strip(),
            "info",
        )
    ]


def at_largest_n(summary: dict[str, Any], nn_key: str = "nn", kernel: str = "entk") -> list[Verdict]:
    """The network against kernel regression with its own eNTK at init at the largest n."""
    loss = summary.get("test_loss_at_n_max") or {}
    if nn_key not in loss or kernel not in loss:
        return []
    grid = summary.get("n_grid") or []
    nn, k = loss[nn_key], loss[kernel]
    at = f"at n = {max(grid)}" if grid else "at the largest n"
    if nn <= k:
        text = f"{at}, the network's test loss {fmt_num(nn)} is at or below the {method_label(kernel)}'s {fmt_num(k)}."
        return [Verdict("network vs its linearization", text[0].upper() + text[1:], "info")]
    text = (
        f"{at}, the network's test loss {fmt_num(nn)} is above the {method_label(kernel)}'s {fmt_num(k)}: "
        "the network is worse than its own linearization, so it is under-trained or badly tuned and its "
        "exponent says more about the training recipe than about the network."
    )
    return [Verdict("network vs its linearization", text[0].upper() + text[1:], "does-not-explain")]


def missing(finding: str, why: str) -> Verdict:
    """The verdict of a finding that cannot be judged: ``No verdict: WHY.``"""
    return Verdict(finding, f"No verdict: {why}.", "info")
