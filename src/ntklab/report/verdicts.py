"""Plain-language verdicts: pure functions from an experiment's ``summary.json`` to sentences.

Every sentence states the measured numbers it rests on, formatted by :func:`fmt_alpha` and
:func:`fmt_num` (the report renders the same numbers with the same functions, so a reader, or a
test, finds in the text exactly the values of the summary rounded for display).

A kernel's exponent is compared with the network's through the paired bootstrap interval of
their difference Δα = α_nn − α_kernel (summary ``differences``, :mod:`ntklab.scaling`): an
interval above 0 means the network's law is steeper, below 0 the kernel's; an interval that
contains 0 means the two are *not distinguishable at this n range*, which is a statement about
the measurement, not evidence that they are equal. Summaries without ``differences`` fall back
to comparing the two marginal intervals. A fit flagged ``fit_ok: false`` is named in the
sentence: its curve bends, and one slope misreports it.

Findings (Vyas, Bansal & Nakkiran 2022, arXiv 2206.10012):

* ``data-scaling``: the network's α against the eNTK at init (and the infinite NTK/NNGP);
* ``width-scaling``: the same comparison for every width that has both;
* ``pretrained-kernel``: the after-kernel against the eNTK at init and against the network;
* ``kernel-evolution``: whether the eNTK barely moves, settles or keeps moving (angles between
  kernels, ``evolution.verdict``), α(t) of kernel regression with K_t, and kernel regression with
  the final eNTK against the network.

Example
-------
>>> s = {"experiment": "data-scaling", "n_grid": [32, 64],
...      "exponents": {"nn": {"alpha": 0.42, "ci_low": 0.37, "ci_high": 0.47},
...                    "entk": {"alpha": 0.21, "ci_low": 0.18, "ci_high": 0.24}}}
>>> print(verdicts(s)[0].text)  # doctest: +NORMALIZE_WHITESPACE
The network's exponent α = 0.420 [0.370, 0.470] is above the eNTK at init's α = 0.210 [0.180,
0.240] (95% CIs, n = 32–64): the eNTK at init does not explain the network's data scaling.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

LABELS = {
    "nn": "network",
    "entk": "eNTK at init",
    "ntk": "infinite-width NTK",
    "nngp": "infinite-width NNGP",
    "after_kernel": "after-kernel",
}
KERNELS = ("entk", "ntk", "nngp")
MATCH = 1.05  # kernel-regression test loss within 5% of the network's: "matches"; below: "beats"


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


# ----------------------------------------------------------------------------- formatting


def fmt_num(x: Any) -> str:
    """A measured number for display: 4 significant digits (``nan`` when missing)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "nan"
    return "nan" if not math.isfinite(v) else f"{v:.4g}"


def fmt_exp(x: Any) -> str:
    """An exponent or CI bound for display: 3 decimals (``nan`` when missing)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "nan"
    return "nan" if not math.isfinite(v) else f"{v:.3f}"


def fmt_alpha(e: dict[str, Any]) -> str:
    """``α = 0.420 [0.370, 0.470]``: an exponent with its confidence interval."""
    return f"α = {fmt_exp(e.get('alpha'))} [{fmt_exp(e.get('ci_low'))}, {fmt_exp(e.get('ci_high'))}]"


def fmt_pct(x: Any) -> str:
    """A fraction as a whole percentage, ``62%``."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "nan"
    return "nan" if not math.isfinite(v) else f"{100 * v:.0f}%"


def method_label(method: str) -> str:
    """Human name of a method key: ``after_kernel@n0=128`` -> ``after-kernel (n₀ = 128)``."""
    base, _, tag = method.partition("@")
    name = LABELS.get(base, base)
    if not tag:
        return name
    m = re.fullmatch(r"n0=(\w+)", tag)
    if m:
        return f"{name} (n₀ = {m.group(1)})"
    m = re.fullmatch(r"w(?:idth)?=?(\d+)", tag)
    if m:
        return f"{name} (width {m.group(1)})"
    return f"{name} ({tag})"


def _possessive(label: str) -> str:
    return f"{label}'" if label.endswith("s") else f"{label}'s"


def n_range(summary: dict[str, Any]) -> str:
    """``n = 32–256`` from the summary's ``n_grid`` (empty when unknown)."""
    grid = summary.get("n_grid") or []
    return f"n = {min(grid)}–{max(grid)}" if grid else ""


def _ci_level(summary: dict[str, Any]) -> str:
    ci = summary.get("ci")
    return f"{100 * float(ci):.0f}% CIs" if isinstance(ci, (int, float)) else "95% CIs"


def _finite(e: dict[str, Any], *keys: str) -> bool:
    return all(isinstance(e.get(k), (int, float)) and math.isfinite(e[k]) for k in keys)


# ----------------------------------------------------------------------------- comparisons


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
    pa, pb = f"{_possessive(a_name)} exponent {fmt_alpha(a)}", f"{_possessive(b_name)} {fmt_alpha(b)}"
    paren = f" ({where})" if where else ""
    if not (_finite(a, "alpha", "ci_low", "ci_high") and _finite(b, "alpha", "ci_low", "ci_high")):
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
    if not _finite(diff, "delta", "ci_low", "ci_high"):
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


def _bends(exps: dict[str, Any], *keys: str) -> str:
    """A clause naming the fits flagged as not a power law over their range (empty if none)."""
    bent = [method_label(k) for k in keys if exps.get(k, {}).get("fit_ok") is False]
    if not bent:
        return ""
    return (
        f" Caution: the {' and the '.join(bent)} curve bends over this range (fit_ok false), so one "
        "exponent summarizes it poorly; read the curves."
    )


def _kernel_vs_network(summary: dict[str, Any], nn_key: str, kernel: str, context: str) -> Verdict:
    """Network vs kernel: the paired difference when the summary has it, else the two CIs."""
    exps = summary["exponents"]
    k_label = method_label(kernel)
    diff = (summary.get("differences") or {}).get(f"{nn_key}-{kernel}")
    rng = n_range(summary)
    if diff is not None and diff.get("fit_n_min"):
        rng = f"n = {diff['fit_n_min']}–{diff['fit_n_max']}"
    where = ", ".join(x for x in (_ci_level(summary), rng) if x)
    clauses = dict(
        if_a_above=f"the {k_label} does not explain the network's data scaling.",
        if_b_above=f"the {k_label} scales better than the trained network at this n range.",
        if_overlap=f"not distinguishable at this n range; the {k_label} may explain the network's data scaling here.",
    )
    if diff is not None:
        text, status = compare_by_difference(method_label(nn_key), k_label, diff, where=where, **clauses)
        text = f"{text} ({_possessive(method_label(nn_key))} {fmt_alpha(exps[nn_key])}, {_possessive(k_label)} {fmt_alpha(exps[kernel])}.)"
    else:
        text, status = compare_exponents(
            method_label(nn_key), exps[nn_key], k_label, exps[kernel], where=where, **clauses
        )
    return Verdict(f"{k_label} vs network ({context})", text + _bends(exps, nn_key, kernel), status)


def training(summary: dict[str, Any]) -> list[Verdict]:
    """How the networks were trained: the rule, and any network still improving at its end."""
    tr = summary.get("training") or {}
    if not tr:
        return []
    falling = tr.get("still_falling") or []
    rule = tr.get("rule", "")
    if falling:
        where = ", ".join(f"n = {f['n']} seed {f['seed']}" for f in falling[:6])
        more = f" and {len(falling) - 6} more" if len(falling) > 6 else ""
        text = (
            f"{len(falling)} network(s) ended training with the training loss still falling ({where}{more}): "
            f"they are under-trained, so their test loss overstates what the network can do. {rule}"
        )
        return [Verdict("network training", text.strip(), "does-not-explain")]
    return [
        Verdict(
            "network training", f"Every network's training loss had stopped falling. {rule}".strip(), "info"
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


# ----------------------------------------------------------------------------- per experiment


def data_scaling(summary: dict[str, Any]) -> list[Verdict]:
    """Network vs each kernel of a data-scaling summary (finding 1)."""
    exps = summary.get("exponents", {})
    if "nn" not in exps:
        return [
            _missing(
                "data scaling", "the network has no fitted exponent (fewer than two grid points finished)"
            )
        ]
    out = [_kernel_vs_network(summary, "nn", k, "data scaling") for k in KERNELS if k in exps]
    if not out:
        out.append(_missing("data scaling", "no kernel has a fitted exponent"))
    return out + at_largest_n(summary) + training(summary)


def width_scaling(summary: dict[str, Any]) -> list[Verdict]:
    """Network vs kernels, width by width, for methods keyed ``METHOD@TAG`` (finding 2).

    Plain keys (``nn``, ``entk``, ...) are compared as in :func:`data_scaling`; keyed ones are
    compared within the same tag (``nn@w=64`` with ``entk@w=64``).
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
                out.append(_kernel_vs_network(summary, nn_key, f"{k}{suffix}", "width scaling"))
            elif suffix and k in exps and f"{nn_key}-{k}" in (summary.get("differences") or {}):
                out.append(_kernel_vs_network(summary, nn_key, k, "width scaling"))
    return (
        out or [_missing("width scaling", "no width has both a network and a kernel exponent")]
    ) + training(summary)


def pretrained_kernel(summary: dict[str, Any]) -> list[Verdict]:
    """After-kernel vs eNTK at init and vs the network (finding 3)."""
    exps = summary.get("exponents", {})
    after = sorted((m for m in exps if m.startswith("after_kernel")), key=lambda m: (m.endswith("=n"), m))
    if not after:
        return [_missing("pre-trained kernel", "no after-kernel has a fitted exponent")]
    where = ", ".join(x for x in (_ci_level(summary), n_range(summary)) if x)
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
                at = ", ".join(x for x in (_ci_level(summary), rng) if x)
                text, status = compare_by_difference(method_label("entk"), label, diff, where=at, **clauses)
            else:
                text, status = compare_exponents(
                    method_label("entk"), exps["entk"], label, exps[m], where=where, **clauses
                )
            out.append(
                Verdict(f"{label} vs eNTK at init", text, "info" if status != "indistinguishable" else status)
            )
        if "nn" in exps:
            out.append(_kernel_vs_network(summary, "nn", m, "pre-trained kernel"))
    return out + at_largest_n(summary) + training(summary)


def _decade_reading(ev: dict[str, Any]) -> tuple[str, bool | None]:
    """The per-decade angles as a sentence, and whether the last decade still turns at least
    ``decade_turn_ratio`` as far as the largest (None without decades)."""
    dec = ev.get("decade_angles") or []
    r, turn = ev.get("last_decade_over_max_decade"), ev.get("decade_turn_ratio", 0.5)
    if not dec or not _finite({"r": r}, "r"):
        return "", None
    per = ", ".join(
        f"{fmt_num(d['angle'])} rad (epochs {fmt_num(d['from_epoch'])}–{fmt_num(d['to_epoch'])})" for d in dec
    )
    turning = r >= turn
    reading = (
        "so on a logarithmic time axis it keeps turning"
        if turning
        else "so it slows on a logarithmic time axis too"
    )
    text = (
        f" Per decade of training (K_t to K_10t) it turns {per}: the last decade turns {fmt_pct(r)} "
        f"as far as the largest, {reading}."
    )
    return text, turning


def _evolution_motion(ev: dict[str, Any]) -> Verdict | None:
    """Barely moves / settles / keeps moving (``evolution.verdict``), with the numbers."""
    verdict = ev.get("verdict")
    if verdict not in ("barely-moves", "settles", "keeps-moving"):
        return None
    theta, s = fmt_num(ev.get("total_angle")), fmt_num(ev.get("final_distance_to_init"))
    w1, w2 = fmt_num(ev.get("angular_speed_first_half")), fmt_num(ev.get("angular_speed_second_half"))
    ratio, keep = fmt_pct(ev.get("second_over_first_half")), fmt_pct(ev.get("keeps_moving_ratio"))
    speeds = (
        f"it turns {w1} rad/epoch over the first half of training and {w2} over the second "
        f"({ratio} of the first; the threshold is {keep})"
    )
    decades, turning = _decade_reading(ev)
    if verdict == "barely-moves":
        text = (
            f"The kernel barely moves (lazy regime): over all of training it turns Θ = {theta} rad from the "
            f"kernel at init (S = {s}), below the {fmt_num(ev.get('lazy_angle'))} rad threshold."
        )
        status = "explains"
    elif verdict == "settles":
        text = f"The kernel settles on a linear time axis: Θ = {theta} rad from init in all, and {speeds}.{decades}"
        status = "info" if turning else "explains"
    else:
        text = (
            f"The kernel keeps moving: Θ = {theta} rad from init in all, and {speeds}; no kernel fixed "
            f"early in training describes this run.{decades}"
        )
        status = "does-not-explain"
    half = ev.get("verdict_half_resolution")
    if half and half != verdict:
        text += f" On every second checkpoint it would read {half}: the run is near a threshold."
    return Verdict("does the eNTK keep moving?", text, status)


def _evolution_exponent(summary: dict[str, Any], ev: dict[str, Any]) -> Verdict | None:
    """α(t) of kernel regression with K_t: at init against the end of training."""
    exps = [e for e in ev.get("kt_exponents") or [] if _finite(e, "alpha")]
    if len(exps) < 2:
        return None
    first, last = exps[0], exps[-1]
    grid = ev.get("kt_grid") or []
    where = ", ".join(x for x in (_ci_level(summary), f"n = {min(grid)}–{max(grid)}" if grid else "") if x)
    text, status = compare_exponents(
        "final eNTK",
        last,
        "eNTK at init",
        first,
        where=where,
        if_a_above="kernel regression with K_t scales better after training, as in the paper's fourth finding.",
        if_b_above="kernel regression with the final eNTK scales worse than with the eNTK at init.",
        if_overlap="the exponent of kernel regression with K_t does not change distinguishably during training.",
    )
    best = max(exps, key=lambda e: e["alpha"])
    text += f" The largest α(t) is {fmt_alpha(best)} at epoch {fmt_num(best['epoch'])}."
    return Verdict("data scaling of K_t during training", text, status)


def _evolution_network(ev: dict[str, Any]) -> Verdict | None:
    """The trained network against kernel regression with its own eNTK at init."""
    nn, k0 = ev.get("nn_test_loss_final"), ev.get("kt_regression_test_loss_init")
    if not _finite({"nn": nn, "k0": k0}, "nn", "k0"):
        return None
    text = (
        f"The network trains {ev.get('steps', '?')} steps ({fmt_num(ev.get('final_epoch'))} epochs) on "
        f"n = {ev.get('n', '?')} points to train MSE {fmt_num(ev.get('nn_train_loss_final'))}, test MSE "
        f"{fmt_num(nn)} (0-1 error {fmt_num(ev.get('nn_test_error_final'))}); kernel regression with its eNTK "
        f"at init on n = {ev.get('regress_n', '?')} reaches test MSE {fmt_num(k0)} (0-1 error "
        f"{fmt_num(ev.get('kt_regression_test_error_init'))})"
    )
    if nn <= k0:
        return Verdict("network vs its linearization", f"{text}.", "info")
    text += (
        ": the network is worse than its own linearization, so it is under-trained or badly tuned, and "
        "how its kernel moves says more about the training recipe than about the network."
    )
    return Verdict("network vs its linearization", text, "does-not-explain")


def kernel_evolution(summary: dict[str, Any]) -> list[Verdict]:
    """How the eNTK moves, α(t) of regression with K_t, and regression with the final eNTK
    (finding 4), after how well the network trained."""
    ev = summary.get("evolution") or {}
    motion = _evolution_motion(ev)
    if motion is None:
        return [_missing("kernel evolution", "the kernel's motion was not measured (too few checkpoints)")]
    out = [v for v in (_evolution_network(ev), motion, _evolution_exponent(summary, ev)) if v is not None]
    a0, a1 = ev.get("initial_alignment"), ev.get("final_alignment")
    if isinstance(a1, (int, float)):
        change = f" (from {fmt_num(a0)} at init)" if isinstance(a0, (int, float)) else ""
        out.append(
            Verdict(
                "kernel-target alignment",
                f"The centered kernel-target alignment of the eNTK is {fmt_num(a1)} at the end of training{change}.",
                "info",
            )
        )
    kt, nn = ev.get("kt_regression_test_loss_final"), ev.get("nn_test_loss_final")
    if _finite({"kt": kt, "nn": nn}, "kt", "nn"):
        k0 = ev.get("kt_regression_test_loss_init")
        init = f" (with the eNTK at init: {fmt_num(k0)})" if isinstance(k0, (int, float)) else ""
        lead = (
            f"Kernel regression with the final eNTK on n = {ev.get('regress_n', '?')} reaches test MSE "
            f"{fmt_num(kt)}{init}, against the trained network's {fmt_num(nn)} on n = {ev.get('n', '?')}"
        )
        if kt * MATCH < nn:
            out.append(
                Verdict(
                    "regression with the final eNTK",
                    f"{lead}: a fixed kernel taken at the end of training generalizes better than the "
                    "network itself here.",
                    "explains",
                )
            )
        elif kt <= MATCH * nn:
            out.append(
                Verdict(
                    "regression with the final eNTK",
                    f"{lead}: the kernel at the end of training captures what the network learned.",
                    "explains",
                )
            )
        else:
            out.append(
                Verdict(
                    "regression with the final eNTK",
                    f"{lead}: even the final kernel, used as a fixed kernel, falls short of the network.",
                    "does-not-explain",
                )
            )
    return out


def _missing(finding: str, why: str) -> Verdict:
    return Verdict(finding, f"No verdict: {why}.", "info")


FINDINGS = {
    "data-scaling": data_scaling,
    "width-scaling": width_scaling,
    "pretrained-kernel": pretrained_kernel,
    "kernel-evolution": kernel_evolution,
}


def verdicts(summary: dict[str, Any]) -> list[Verdict]:
    """The verdicts of one experiment's summary (dispatch on ``summary["experiment"]``)."""
    fn = FINDINGS.get(summary.get("experiment", ""))
    if fn is None:
        return [_missing(str(summary.get("experiment")), "this experiment has no verdict rules")]
    return fn(summary)
