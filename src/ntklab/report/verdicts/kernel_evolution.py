"""Verdicts of ``kernel-evolution``: whether the eNTK barely moves, settles or keeps moving, α(t)
of kernel regression with K_t, and regression with the final eNTK against the network (finding 4)."""

from __future__ import annotations

from typing import Any

from ntklab.report.formatting import fmt_alpha, fmt_num, fmt_pct
from ntklab.report.verdicts.comparisons import (
    Verdict,
    ci_phrase,
    compare_exponents,
    has_finite,
    missing,
)

MATCH = 1.05  # kernel-regression test loss within 5% of the network's: "matches"; below: "beats"


def _decade_reading(ev: dict[str, Any]) -> tuple[str, bool | None]:
    """The per-decade angles as a sentence, and whether the last decade still turns at least
    ``decade_turn_ratio`` as far as the largest (None without decades)."""
    dec = ev.get("decade_angles") or []
    r, turn = ev.get("last_decade_over_max_decade"), ev.get("decade_turn_ratio", 0.5)
    if not dec or not has_finite({"r": r}, "r"):
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
    exps = [e for e in ev.get("kt_exponents") or [] if has_finite(e, "alpha")]
    if len(exps) < 2:
        return None
    first, last = exps[0], exps[-1]
    grid = ev.get("kt_grid") or []
    where = ", ".join(x for x in (ci_phrase(summary), f"n = {min(grid)}–{max(grid)}" if grid else "") if x)
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
    if not has_finite({"nn": nn, "k0": k0}, "nn", "k0"):
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
        return [missing("kernel evolution", "the kernel's motion was not measured (too few checkpoints)")]
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
    if has_finite({"kt": kt, "nn": nn}, "kt", "nn"):
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
