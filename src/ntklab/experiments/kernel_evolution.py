"""Experiment ``kernel-evolution``: how the empirical NTK moves during training.

The paper's fourth finding (Vyas, Bansal & Nakkiran 2022): the eNTK keeps moving for most of
training, against the claim (Fort et al. 2020) that it settles within a few epochs.

Per repetition, one training unit trains the network on the first n = ``evolution.n`` training
points and stores its ``state_dict`` at checkpoint steps t_0 = 0 < t_1 < … < t_m = end
(log-spaced, or ``evolution.checkpoint_steps``; with ``train.schedule = "step"`` each LR
milestone and the steps ``milestone_window``·total before and after it are added). One kernel
unit per checkpoint rebuilds the network there and computes its eNTK K_t
(:mod:`ntklab.experiments.evolution_units`). The analysis then needs no training:

* e_t = t · min(B, n) / n, epochs completed after t steps (B the batch size);
* probe kernel P_t: K_t on the first ``probe_train`` training and first ``probe_test`` test
  points;
* distance to init S(P_0, P_t), S(K₁, K₂) = 1 − ⟨K₁, K₂⟩_F / (‖K₁‖_F ‖K₂‖_F) (docs/design.md);
* velocity between consecutive checkpoints v(t_i) = S(P_{t_i}, P_{t_{i+1}}) / (e_{t_{i+1}} − e_{t_i})
  (per epoch; the tidy row carries step t_i, the start of the interval), and the angular
  velocity ω(t_i) = arccos(1 − S(P_{t_i}, P_{t_{i+1}})) / (e_{t_{i+1}} − e_{t_i}) (see
  :func:`angular_velocities`: S is second order in small changes, so v depends on the interval
  length and ω does not);
* centered kernel–target alignment of P_t on the probe training points with their targets;
* spectrum of P_t: top eigenvalues λ_1 ≥ λ_2 ≥ …, effective rank (Σλ)² / Σλ², and the kernel
  scale tr P_t / m;
* kernel regression with K_t as a fixed kernel on the first ``regress_n`` training points (ridge
  chosen on the validation split, as in data-scaling), test MSE and 0-1 error — next to the
  network's own test MSE and error at t on the same test set.

Summary ``evolution`` also has ``distance_epoch1_to_final`` = S(P_{t_j}, P_{t_m}) with t_j the
first checkpoint at ≥ 1 epoch: how far the kernel still moves after the first epoch (≈ 0 if it
settled early, the claim of Fort et al.). ``velocity_above_10pct_of_peak_fraction`` is the fraction of training,
measured in epochs, covered by the checkpoint intervals whose velocity is at least 10% of the
peak velocity: Σ_{i: v_i ≥ 0.1 max v} (e_{i+1} − e_i) / e_m. Velocities are averages over the
intervals, so the fraction depends on the checkpoint resolution; the ``angular_velocity_*``
variant is the same with ω.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ntklab.config import KernelEvolutionConfig
from ntklab.experiments.common import arch_label, arch_reads, data_reads, regress_grid
from ntklab.experiments.evolution_units import probe_kernel
from ntklab.experiments.tidy import row
from ntklab.kernels.metrics import alignment, kernel_distance, kernel_velocity, spectrum
from ntklab.run.units import Unit
from ntklab.train import log_spaced_steps, steps_to_epochs

NAME = "kernel-evolution"
U = "ntklab.experiments.evolution_units"
PEAK_FRACTION = 0.1  # "velocity above 10% of its peak"


# ----------------------------------------------------------------------------- checkpoints


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


def checkpoint_steps(cfg: KernelEvolutionConfig) -> list[int]:
    """Checkpoint steps: 0, the end, log-spaced (or explicit) steps, and LR-milestone steps.

    With ``train.schedule = "step"`` every milestone step t_m is added with t_m ± δ,
    δ = round(``milestone_window`` · total), so that the velocities on [t_m − δ, t_m] (old LR)
    and [t_m, t_m + δ] (new LR) are resolved; log-spaced steps strictly inside a window are
    dropped so that both intervals are exactly δ long (explicit steps are always kept).
    """
    ev = cfg.evolution
    total = cfg.train.total_steps(ev.n)
    delta = round(ev.milestone_window * total)
    drops = milestone_steps(cfg)
    if ev.checkpoint_steps is not None:
        base = set(ev.checkpoint_steps)
    else:
        base = {
            s
            for s in log_spaced_steps(total, ev.n_checkpoints)
            if not any(0 < abs(s - t) < delta for t in drops)
        }
    steps = {0, total, *base}
    for t in drops:
        steps |= {t, t - delta, t + delta}
    return sorted(s for s in steps if 0 <= s <= total)


# ----------------------------------------------------------------------------- units


def _train_reads(cfg: KernelEvolutionConfig) -> dict[str, Any]:
    return {
        "seed": cfg.seed,
        "data": data_reads(cfg),
        "arch": arch_reads(cfg),
        "train": cfg.train.model_dump(mode="json"),
    }


def train_unit(cfg: KernelEvolutionConfig, seed_index: int) -> Unit:
    """Train repetition ``seed_index`` on ``evolution.n`` points, keeping every checkpoint."""
    n = cfg.evolution.n
    args = {"seed_index": seed_index, "n": n, "checkpoint_steps": checkpoint_steps(cfg)}
    return Unit(
        "train",
        f"{U}:train_with_checkpoints",
        args,
        _train_reads(cfg),
        label=f"train n={n} seed={seed_index} ({len(args['checkpoint_steps'])} checkpoints)",
    )


def n_kernel_train(cfg: KernelEvolutionConfig) -> int:
    """N: training points the kernel blocks cover, max(regress_n, probe_train)."""
    return max(cfg.evolution.regress_n, cfg.evolution.probe_train)


def kernel_unit(cfg: KernelEvolutionConfig, seed_index: int, step: int) -> Unit:
    """eNTK blocks of repetition ``seed_index`` at checkpoint ``step``.

    It reads the training unit's stored checkpoint (``after``). Its key holds what determines the
    state at ``step`` — not the checkpoint list — and the points, so refining the checkpoints
    retrains but reuses the kernels already computed.
    """
    args = {
        "seed_index": seed_index,
        "step": step,
        "n_train": n_kernel_train(cfg),
        "probe_test": cfg.evolution.probe_test,
    }
    reads = {
        **_train_reads(cfg),
        "n": cfg.evolution.n,
        "mode": cfg.kernel.mode,
        "output_index": cfg.kernel.output_index,
    }
    return Unit(
        "entk",
        f"{U}:kernels_at_checkpoint",
        args,
        reads,
        label=f"eNTK step={step} seed={seed_index}",
        after=(train_unit(cfg, seed_index).key,),
    )


def plan(cfg: KernelEvolutionConfig) -> list[Unit]:
    """Per repetition: the training unit first, then one kernel unit per checkpoint."""
    units: list[Unit] = []
    for i in range(cfg.seeds):
        units.append(train_unit(cfg, i))
        units += [kernel_unit(cfg, i, t) for t in checkpoint_steps(cfg)]
    return units


# ----------------------------------------------------------------------------- analysis


def velocities(probes: list[np.ndarray], epochs: list[float]) -> list[float]:
    """v_i = S(P_i, P_{i+1}) / (e_{i+1} − e_i) for consecutive checkpoints (length m − 1)."""
    return [kernel_velocity(a, b, e1 - e0) for a, b, e0, e1 in zip(probes, probes[1:], epochs, epochs[1:])]


def angular_velocities(probes: list[np.ndarray], epochs: list[float]) -> list[float]:
    """ω_i = arccos(1 − S(P_i, P_{i+1})) / (e_{i+1} − e_i), radians per epoch.

    The angle between the kernels as vectors of the Frobenius space. S = 1 − cos θ ≈ θ²/2 is
    second order in a small change, so for a kernel drifting at a steady rate
    S(K_t, K_{t+dt}) / dt grows like dt and velocities over intervals of different lengths
    (log-spaced checkpoints) are not comparable; θ / dt is first order and does not depend on dt.
    """
    return [
        float(np.arccos(np.clip(1.0 - kernel_distance(a, b), -1.0, 1.0)) / (e1 - e0))
        for a, b, e0, e1 in zip(probes, probes[1:], epochs, epochs[1:])
    ]


def velocity_fraction(vel: list[float], epochs: list[float], frac: float = PEAK_FRACTION) -> dict[str, float]:
    """How long the kernel keeps moving, from interval velocities ``vel`` and checkpoint ``epochs``.

    ``above`` = Σ_{i: v_i ≥ frac·max v} (e_{i+1} − e_i) / e_m (fraction of training in epochs);
    ``last`` = e_{j+1} / e_m for the last interval j with v_j ≥ frac·max v.
    """
    if not vel or epochs[-1] <= 0:
        return {"above": math.nan, "last": math.nan, "peak": math.nan, "peak_epoch": math.nan}
    v = np.asarray(vel)
    e = np.asarray(epochs)
    dt = np.diff(e)
    keep = v >= frac * v.max()
    j = int(np.flatnonzero(keep)[-1])
    i = int(v.argmax())
    return {
        "above": float(dt[keep].sum() / e[-1]),
        "last": float(e[j + 1] / e[-1]),
        "peak": float(v.max()),
        "peak_epoch": float((e[i] + e[i + 1]) / 2),
    }


def seed_series(
    cfg: KernelEvolutionConfig, trained: dict, kernels: dict[int, dict], ctx: Any
) -> dict[str, Any]:
    """Every per-checkpoint quantity of one repetition (checkpoints whose kernel is missing skipped)."""
    s, ev = ctx.splits, cfg.evolution
    steps = [t for t in trained["steps"] if t in kernels]
    epochs = [steps_to_epochs(t, ev.n, cfg.train.batch_size) for t in steps]
    probes = [probe_kernel(kernels[t]["blocks"], len(s.x_val), ev.probe_train) for t in steps]
    y_probe = s.y_train[: ev.probe_train]
    series: dict[str, Any] = {
        "steps": steps,
        "epochs": epochs,
        "velocity": velocities(probes, epochs),
        "angular_velocity": angular_velocities(probes, epochs),
    }
    per: list[dict[str, float]] = []
    for t, p in zip(steps, probes):
        top, eff = spectrum(p, ev.top_eigenvalues)
        rec = {
            "alignment": alignment(p[: ev.probe_train, : ev.probe_train], y_probe),
            "eff_rank": eff,
            "kernel_scale": float(np.trace(p) / len(p)),
            **{f"eig_{k + 1}": float(v) for k, v in enumerate(top)},
        }
        if 0 in kernels and steps[0] == 0:
            rec["distance_to_init"] = kernel_distance(probes[0], p)
        b = kernels[t]["blocks"]
        (kt,) = regress_grid(b["train"], b["cross"], s, [ev.regress_n], cfg.kernel.ridges, cfg.kernel.ridge)
        rec.update({f"kt_{k}": kt[k] for k in ("test_mse", "test_error", "ridge", "jitter")})
        rec.update({f"nn_{k}": v for k, v in trained["nn"][t].items()})
        per.append(rec)
    series["metrics"] = per
    late = [k for k, e in enumerate(epochs) if e >= 1.0]
    j = late[0] if late else len(epochs) - 1
    series["epoch1"] = {"epoch": epochs[j], "distance_to_final": kernel_distance(probes[j], probes[-1])}
    return series


def seed_rows(cfg: KernelEvolutionConfig, seed: int, series: dict[str, Any]) -> list[dict]:
    """Tidy rows of one repetition: method ``nn`` (n = evolution.n) for the network's metrics and
    the epoch; ``entk`` for kernel metrics (n = evolution.n, or regress_n for ``kt_*``)."""
    ev, w, exp = cfg.evolution, cfg.arch.width, cfg.experiment
    rows = []
    for k, (t, e, rec) in enumerate(zip(series["steps"], series["epochs"], series["metrics"])):
        rows.append(row(exp, "nn", ev.n, w, seed, t, "epoch", e))
        for m, v in rec.items():
            method = "nn" if m.startswith("nn_") else "entk"
            n = ev.regress_n if m.startswith("kt_") else ev.n
            rows.append(row(exp, method, n, w, seed, t, m, v))
        for m in ("velocity", "angular_velocity"):
            if k < len(series[m]):
                rows.append(row(exp, "entk", ev.n, w, seed, t, m, series[m][k]))
    return rows


def milestone_report(cfg: KernelEvolutionConfig, series: dict[str, Any]) -> list[dict[str, float]]:
    """Velocity on the checkpoint interval ending at, and the one starting at, each LR milestone."""
    steps, vel, aw, out = series["steps"], series["velocity"], series["angular_velocity"], []
    for frac, t in milestones(cfg):
        if t not in steps:
            continue
        i = steps.index(t)
        before = vel[i - 1] if 0 < i <= len(vel) else math.nan
        after = vel[i] if i < len(vel) else math.nan
        out.append(
            {
                "milestone": frac,
                "step": t,
                "epoch": series["epochs"][i],
                "velocity_before": before,
                "velocity_after": after,
                "after_over_before": after / before if before else math.nan,
                "angular_velocity_before": aw[i - 1] if 0 < i <= len(aw) else math.nan,
                "angular_velocity_after": aw[i] if i < len(aw) else math.nan,
            }
        )
    return out


SUMMARY_KEYS = (
    "velocity_above_10pct_of_peak_fraction",
    "velocity_last_above_10pct_of_peak_fraction",
    "velocity_peak",
    "velocity_peak_epoch",
    "angular_velocity_above_10pct_of_peak_fraction",
    "angular_velocity_last_above_10pct_of_peak_fraction",
    "angular_velocity_peak",
    "angular_velocity_peak_epoch",
    "final_distance_to_init",
    "distance_epoch1_to_final",
    "epoch1_checkpoint_epoch",
    "initial_alignment",
    "final_alignment",
    "initial_eff_rank",
    "final_eff_rank",
    "kt_regression_test_loss_init",
    "kt_regression_test_loss_final",
    "kt_regression_test_error_final",
    "nn_test_loss_final",
    "nn_test_error_final",
    "final_epoch",
)


def seed_summary(cfg: KernelEvolutionConfig, series: dict[str, Any]) -> dict[str, Any]:
    """The summary numbers of one repetition."""
    last, first = series["metrics"][-1], series["metrics"][0]
    vf = velocity_fraction(series["velocity"], series["epochs"])
    af = velocity_fraction(series["angular_velocity"], series["epochs"])
    return {
        "velocity_above_10pct_of_peak_fraction": vf["above"],
        "velocity_last_above_10pct_of_peak_fraction": vf["last"],
        "velocity_peak": vf["peak"],
        "velocity_peak_epoch": vf["peak_epoch"],
        "angular_velocity_above_10pct_of_peak_fraction": af["above"],
        "angular_velocity_last_above_10pct_of_peak_fraction": af["last"],
        "angular_velocity_peak": af["peak"],
        "angular_velocity_peak_epoch": af["peak_epoch"],
        "final_distance_to_init": last.get("distance_to_init", math.nan),
        "distance_epoch1_to_final": series["epoch1"]["distance_to_final"],
        "epoch1_checkpoint_epoch": series["epoch1"]["epoch"],
        "initial_alignment": first["alignment"],
        "final_alignment": last["alignment"],
        "initial_eff_rank": first["eff_rank"],
        "final_eff_rank": last["eff_rank"],
        "kt_regression_test_loss_init": first["kt_test_mse"],
        "kt_regression_test_loss_final": last["kt_test_mse"],
        "kt_regression_test_error_final": last["kt_test_error"],
        "nn_test_loss_final": last["nn_test_mse"],
        "nn_test_error_final": last["nn_test_error"],
        "final_epoch": series["epochs"][-1],
        "milestones": milestone_report(cfg, series),
    }


def _mean(values: list[Any]) -> float:
    vals = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return float(np.mean(vals)) if vals else math.nan


def analyze(
    cfg: KernelEvolutionConfig, results: dict[str, Any], ctx: Any
) -> tuple[list[dict], dict[str, Any]]:
    """Tidy rows and the summary's ``evolution`` (means over repetitions) from unit results.

    Repetitions without a training result are skipped, as are checkpoints without a kernel.
    """
    ev = cfg.evolution
    rows: list[dict] = []
    per_seed: list[dict[str, Any]] = []
    for i in range(cfg.seeds):
        trained = results.get(train_unit(cfg, i).key)
        if trained is None:
            continue
        kernels = {}
        for t in trained["steps"]:
            k = results.get(kernel_unit(cfg, i, t).key)
            if k is not None:
                kernels[t] = k
        if not kernels:
            continue
        series = seed_series(cfg, trained, kernels, ctx)
        rows += seed_rows(cfg, i, series)
        per_seed.append({"seed": i, **seed_summary(cfg, series)})
    # every key is present (NaN when no repetition finished), so summaries always share keys
    evolution: dict[str, Any] = {k: _mean([p[k] for p in per_seed]) for k in SUMMARY_KEYS}
    evolution.update(
        {
            "seeds_done": len(per_seed),
            "n": ev.n,
            "regress_n": ev.regress_n,
            "probe_train": ev.probe_train,
            "probe_test": ev.probe_test,
            "kernel_mode": cfg.kernel.mode,
            "notes": (
                "velocity v_i = S(P_i, P_i+1) / (e_i+1 - e_i) per epoch on the probe kernel; "
                "velocity_above_10pct_of_peak_fraction = fraction of training in epochs covered by "
                "checkpoint intervals with v >= 0.1 max v; S is second order in small changes, so v "
                "grows with the interval length and late (long, log-spaced) intervals read higher: "
                "angular_velocity = arccos(1 - S) / dt (rad/epoch) does not depend on dt; K_t regression (kt_*) uses the first "
                f"regress_n = {ev.regress_n} of the n = {ev.n} training points the network trains on, "
                "and the same test set as nn_*; values are means over seeds (see per_seed)"
            ),
            "per_seed": per_seed,
        }
    )
    steps = checkpoint_steps(cfg)
    summary = {
        "exponents": {},
        "evolution": evolution,
        "checkpoints": {
            "steps": steps,
            "epochs": [steps_to_epochs(t, ev.n, cfg.train.batch_size) for t in steps],
            "milestone_steps": milestone_steps(cfg),
        },
    }
    return rows, summary


def figures(cfg: KernelEvolutionConfig, rows: list[dict], summary: dict, out_dir: Path) -> list[Path]:
    """Distance and velocity, alignment, K_t regression vs network, spectrum — against epochs."""
    from ntklab.report.evolution_figures import evolution_figures

    title = f"{cfg.data.name}: {arch_label(cfg.arch, width=True)}, n={cfg.evolution.n}"
    return evolution_figures(rows, summary, Path(out_dir), title=title)
