"""The checkpoints of the ``kernel-evolution`` training run, and time in epochs.

The run trains for T = ``train.total_steps(evolution.n)`` steps and keeps the network at:

* the **grid**: ``n_checkpoints`` steps evenly spaced over [0, T] (m = n_checkpoints − 1 equal
  intervals of Δ = T / m steps), the only checkpoints angular velocities are measured on;
* the **decades**: T/10^k for k = 1 … ``decades`` (a denser early set, on a log axis);
* ``checkpoint_steps`` (extra) and, with ``train.schedule = "step"``, each LR milestone t_m and
  t_m ± δ, δ = round(``milestone_window`` · T).

Time is in epochs, e_t = t · min(B, n) / n (:func:`epoch_at`).
"""

from __future__ import annotations

import math

from ntklab.experiments.evolution_config import KernelEvolutionConfig
from ntklab.train import steps_to_epochs


def milestones(cfg: KernelEvolutionConfig) -> list[tuple[float, int]]:
    """(milestone, first step trained at the lowered LR) of the ``step`` schedule (empty otherwise).

    The step is the smallest t with t / total ≥ milestone, the comparison of
    :func:`ntklab.train.lr_factor`; milestones at or after the end are dropped.
    """
    tc = cfg.train
    total = tc.total_steps(cfg.evolution.n)
    if tc.schedule != "step" or total <= 0:
        return []
    out = []
    for m in sorted(tc.step_milestones):
        t = max(0, math.floor(m * total) - 1)
        while t / max(total, 1) < m:
            t += 1
        if 0 < t < total:
            out.append((m, t))
    return out


def milestone_steps(cfg: KernelEvolutionConfig) -> list[int]:
    """The LR-drop steps of :func:`milestones`."""
    return sorted({t for _, t in milestones(cfg)})


def even_steps(total: int, count: int) -> list[int]:
    """``count`` steps evenly spaced over [0, total] (rounded to integers), both ends included."""
    return sorted({round(k * total / (count - 1)) for k in range(count)})


def decade_steps(total: int, decades: int) -> list[int]:
    """total / 10^k for k = ``decades`` … 1, rounded, those ≥ 1, ascending (then ``total`` ends
    the last decade)."""
    return sorted({round(total / 10**k) for k in range(1, decades + 1)} - {0})


def grid_steps(cfg: KernelEvolutionConfig) -> list[int]:
    """The evenly spaced grid of the angular velocity."""
    return even_steps(cfg.train.total_steps(cfg.evolution.n), cfg.evolution.n_checkpoints)


def decade_points(cfg: KernelEvolutionConfig) -> list[int]:
    """Decade boundaries T/10^decades < … < T/10 < T."""
    total = cfg.train.total_steps(cfg.evolution.n)
    return [*decade_steps(total, cfg.evolution.decades), total]


def checkpoint_steps(cfg: KernelEvolutionConfig) -> list[int]:
    """Every checkpoint: the grid, the decades, explicit steps and LR milestones t_m, t_m ± δ.

    δ = round(``milestone_window`` · total): the angular velocities on [t_m − δ, t_m] (old LR)
    and [t_m, t_m + δ] (new LR) are over equal intervals.
    """
    ev = cfg.evolution
    total = cfg.train.total_steps(ev.n)
    delta = round(ev.milestone_window * total)
    steps = {*grid_steps(cfg), *decade_points(cfg), *(ev.checkpoint_steps or [])}
    for t in milestone_steps(cfg):
        steps |= {t, t - delta, t + delta}
    return sorted(s for s in steps if 0 <= s <= total)


def epoch_at(cfg: KernelEvolutionConfig, step: int) -> float:
    """Epochs trained on the ``evolution.n`` points after ``step`` steps."""
    return steps_to_epochs(step, cfg.evolution.n, cfg.train.batch_size)
