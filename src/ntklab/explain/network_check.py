"""How data scaling's networks trained, and whether the network at the largest n beats its
eNTK at init (kernel regression), or why not: the training paragraph of the report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ntklab.config.base import AnyConfig
from ntklab.explain.plan import training_rule


def best_steps(results_csv: Path, n: int) -> list[float]:
    """The steps of the kept weights (``best_step`` rows) of the networks (method ``nn``) at n."""
    import csv

    try:
        with open(results_csv, newline="") as f:
            return [
                float(r["value"])
                for r in csv.DictReader(f)
                if r.get("method") == "nn" and r.get("metric") == "best_step" and int(r.get("n", -1)) == n
            ]
    except (OSError, ValueError, KeyError):
        return []


def network_check(
    cfg: AnyConfig, summary: Mapping[str, Any], short: bool = False, kept_at: Sequence[float] = ()
) -> dict[str, Any]:
    """How data scaling's networks trained, and whether the network at the largest n is at
    least as good as kernel regression with its eNTK at init; when not, why (in ``notes``).
    ``kept_at``: the steps of the kept weights at that n (all 0: early stopping kept the
    network at initialization, which then predicts f0, and says so).

    Returns ``{"rule", "n", "planned_steps", "steps", "best_step", "nn", "entk", "notes"}``
    (losses: the mean over repetitions of ``fit.metric`` at n = ``data.n_max``; None when
    missing).
    """
    n, metric = cfg.data.n_max, cfg.fit.metric
    rule = training_rule(cfg, short)
    losses = summary.get("test_loss_at_n_max") or {}
    nn_loss, entk_loss = losses.get("nn"), losses.get("entk")
    per_n = ((summary.get("training") or {}).get("per_n") or {}).get("nn", {}).get(str(n), {})
    steps, planned = per_n.get("steps"), cfg.train.total_steps(n)
    training = summary.get("training") or {}
    falling, improving = (
        [r for r in training.get(flag, []) if r.get("n") == n and r.get("method") == "nn"]
        for flag in ("still_falling", "improving_at_end")
    )
    notes = [f"Training rule: {rule}."]
    taken = (
        f"{steps:.0f} of {planned} planned steps on average"
        if steps is not None
        else f"{planned} planned steps"
    )
    at_init = bool(kept_at) and max(kept_at) == 0
    if nn_loss is None or entk_loss is None:
        notes.append(f"At n = {n} the network or the eNTK at init has no result: no comparison.")
    elif at_init:
        notes.append(
            f"At n = {n} early stopping kept every network at initialization (no training step improved its "
            f"validation loss), so the 'trained' network predicts f0 ({metric} {nn_loss:.4g}; kernel regression "
            f"with its eNTK at init: {entk_loss:.4g}): at this n the network learns nothing that generalizes"
            + ("; its training was also shortened below a useful length to fit the budget" if short else "")
            + ". A larger n (a larger budget) or another learning rate (train.lr) may change that."
        )
    elif nn_loss <= entk_loss:
        notes.append(
            f"At n = {n} the trained network ({metric} {nn_loss:.4g}, {taken}) is at least as good as kernel "
            f"regression with its eNTK at init ({entk_loss:.4g})."
        )
    else:
        if short:
            why = "training was shortened below a useful length to fit the budget; give a larger budget"
        elif falling:
            why = (
                "its training loss was still falling when the planned steps ended (under-trained); give a "
                "larger budget, or more train.epochs / train.min_steps"
            )
        elif improving:
            why = (
                "its validation loss was still improving when the planned steps ended (under-trained); give "
                "a larger budget, or more train.epochs / train.min_steps"
            )
        elif steps is not None and steps < planned:
            why = (
                "early stopping ended training when the validation loss stopped improving, so more steps "
                "would not help; the network generalizes worse than its linearization at init here, or its "
                "learning rate (train.lr) suits it badly"
            )
        else:
            why = (
                "it trained the planned steps and its training loss had stopped falling; the network "
                "generalizes worse than its linearization at init here, or its learning rate (train.lr) suits it badly"
            )
        notes.append(
            f"At n = {n} the trained network ({metric} {nn_loss:.4g}, {taken}) is worse than kernel regression "
            f"with its eNTK at init ({entk_loss:.4g}): {why}."
        )
    return {
        "rule": rule,
        "n": n,
        "planned_steps": planned,
        "steps": steps,
        "best_step": float(np.mean(kept_at)) if len(kept_at) else None,
        "nn": nn_loss,
        "entk": entk_loss,
        "notes": notes,
    }
