"""Experiment ``kernel-evolution``: how the empirical NTK moves during training.

The paper's fourth finding (Vyas, Bansal & Nakkiran 2022): the eNTK keeps moving for most of
training, against the claim (Fort et al. 2020) that it settles within a few epochs.

Per repetition, one training unit trains the network on the first n = ``evolution.n`` points of
the repetition's own draw of the training pool (:meth:`~ntklab.run.context.RunContext.seed_splits`)
for a fixed length T (steps), and stores its ``state_dict`` at the checkpoints
(:mod:`~ntklab.experiments.evolution_checkpoints`: an evenly spaced grid, the decades T/10^k and
the LR milestones). One kernel unit per checkpoint rebuilds the network there and computes its
eNTK K_t (:mod:`~ntklab.experiments.evolution_units`). The analysis then needs no training.
Kernels are compared on the probe set P_t (K_t on the first ``probe_train`` training and first
``probe_test`` test points).

Kernel motion (:mod:`~ntklab.experiments.kernel_motion`): angles θ between probe kernels, the
angular velocity ω on the grid, the half speeds ω̄₁, ω̄₂, the total angle Θ = θ(P_0, P_T) and the
decade angles θ(P_t, P_{10t}); S(P_0, P_t) = 1 − cos θ is still reported (``distance_to_init``).
``evolution.verdict`` is :func:`~ntklab.experiments.kernel_motion.classify` on the seed means of
Θ, ω̄₁, ω̄₂; ``verdict_half_resolution`` re-reads the run on every second grid checkpoint (for a
smooth path it agrees); ``last_decade_over_max_decade`` is the last decade's angle over the
largest. Around each LR milestone t_m, ω on [t_m − δ, t_m] (old LR) and [t_m, t_m + δ] (new LR).

Other per-checkpoint quantities
-------------------------------
* centered kernel–target alignment of P_t on the probe training points with their targets;
* spectrum of P_t: top eigenvalues λ_1 ≥ λ_2 ≥ …, effective rank (Σλ)² / Σλ², scale tr P_t / m;
* kernel regression with K_t as a fixed kernel on the first n training points for every n of the
  ``kt`` grid (the data grid below ``regress_n``, and regress_n; ridge chosen on the validation
  split as in data-scaling): test MSE and 0-1 error at each n, and the paper's own measure, the
  exponent α(t) of L ≈ a n^(−α) (metric ``fit.metric``) with a bootstrap CI
  (``evolution.kt_exponents``: one {"step", "epoch", "alpha", "ci_low", "ci_high"} per
  checkpoint); next to the network's own test MSE and error at t on the same test set.

The network regresses Y as f − f₀ (``train.center_output``), so K_t regression on Y is the same
convention. The summary records the network's final train loss (MSE on its n points) and steps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ntklab.experiments.common import arch_label, regress_grid
from ntklab.experiments.evolution_checkpoints import (
    checkpoint_steps,
    decade_points,
    epoch_at,
    grid_steps,
    milestone_steps,
    milestones,
)
from ntklab.experiments.evolution_config import KernelEvolutionConfig
from ntklab.experiments.evolution_units import kernel_unit, train_unit
from ntklab.experiments.kernel_motion import (
    DECADE_TURN,
    KEEPS_MOVING,
    LAZY_ANGLE,
    classify,
    decade_angles,
    decade_ratio,
    finite_mean,
    grid_motion,
    probe_kernel,
)
from ntklab.experiments.tidy import fit_floor, row
from ntklab.kernels.metrics import alignment, kernel_angle, kernel_distance, spectrum
from ntklab.run.units import Unit
from ntklab.scaling import fit_with_ci

if TYPE_CHECKING:
    from ntklab.report.verdicts.comparisons import Verdict

NAME = "kernel-evolution"
TITLE = "Kernel evolution: how the eNTK moves during training"
CONFIG = KernelEvolutionConfig


def plan(cfg: KernelEvolutionConfig) -> list[Unit]:
    """Per repetition: the training unit first, then one kernel unit per checkpoint."""
    units: list[Unit] = []
    for i in range(cfg.seeds):
        units.append(train_unit(cfg, i))
        units += [kernel_unit(cfg, i, t) for t in checkpoint_steps(cfg)]
    return units


# ----------------------------------------------------------------------------- analysis


def kt_grid(cfg: KernelEvolutionConfig) -> list[int]:
    """Training-set sizes of the K_t regression: the data grid below ``regress_n``, and regress_n."""
    r = cfg.evolution.regress_n
    return sorted({n for n in cfg.data.n_grid() if n < r} | {r})


def seed_series(
    cfg: KernelEvolutionConfig, seed: int, trained: dict, kernels: dict[int, dict], ctx: Any
) -> dict[str, Any]:
    """Every per-checkpoint quantity of repetition ``seed`` (checkpoints without a kernel skipped)."""
    s, ev = ctx.seed_splits(seed), cfg.evolution
    steps = [t for t in trained["steps"] if t in kernels]
    epochs = [epoch_at(cfg, t) for t in steps]
    probes = {t: probe_kernel(kernels[t]["blocks"], len(s.x_val), ev.probe_train) for t in steps}
    y_probe = s.y_train[: ev.probe_train]
    grid = [t for t in grid_steps(cfg) if t in probes]

    def motion_on(ts: list[int]) -> dict[str, Any]:
        return grid_motion([probes[t] for t in ts], [epoch_at(cfg, t) for t in ts])

    # every second grid checkpoint (an even number of intervals keeps both ends)
    half = motion_on(grid[::2]) if len(grid) % 2 == 1 and len(grid) >= 5 else {}
    kt_ns = kt_grid(cfg)
    per: list[dict[str, Any]] = []
    for t in steps:
        p = probes[t]
        top, eff = spectrum(p, ev.top_eigenvalues)
        rec: dict[str, Any] = {
            "alignment": alignment(p[: ev.probe_train, : ev.probe_train], y_probe),
            "eff_rank": eff,
            "kernel_scale": float(np.trace(p) / len(p)),
            **{f"eig_{k + 1}": float(v) for k, v in enumerate(top)},
        }
        if 0 in probes:
            rec["distance_to_init"] = kernel_distance(probes[0], p)
            rec["angle_to_init"] = kernel_angle(probes[0], p)
        b = kernels[t]["blocks"]
        rec["kt"] = regress_grid(
            b["train"],
            b["cross"],
            s,
            kt_ns,
            cfg.kernel,
        )
        rec.update({f"nn_{k}": v for k, v in trained["nn"][t].items()})
        per.append(rec)
    late = [t for t, e in zip(steps, epochs) if e >= 1.0]
    j = late[0] if late else steps[-1]
    return {
        "steps": steps,
        "epochs": epochs,
        "metrics": per,
        "grid": grid,
        "motion": motion_on(grid),
        "half_resolution": half,
        "decades": decade_angles(probes, decade_points(cfg)),
        "milestones": milestone_report(cfg, probes),
        "epoch1": {"epoch": epoch_at(cfg, j), "angle_to_final": kernel_angle(probes[j], probes[steps[-1]])},
    }


def milestone_report(cfg: KernelEvolutionConfig, probes: Mapping[int, np.ndarray]) -> list[dict[str, float]]:
    """ω on [t_m − δ, t_m] (old LR) and [t_m, t_m + δ] (new LR) around each LR milestone t_m."""
    total = cfg.train.total_steps(cfg.evolution.n)
    delta = round(cfg.evolution.milestone_window * total)

    def omega(a: int, b: int) -> float:
        if a == b or a not in probes or b not in probes:
            return math.nan
        return kernel_angle(probes[a], probes[b]) / (epoch_at(cfg, b) - epoch_at(cfg, a))

    out = []
    for frac, t in milestones(cfg):
        before, after = omega(t - delta, t), omega(t, t + delta)
        out.append(
            {
                "milestone": frac,
                "step": t,
                "epoch": epoch_at(cfg, t),
                "angular_velocity_before": before,
                "angular_velocity_after": after,
                "after_over_before": after / before if before > 0 else math.nan,
            }
        )
    return out


def seed_rows(cfg: KernelEvolutionConfig, seed: int, series: dict[str, Any]) -> list[dict]:
    """Tidy rows of one repetition, all at n = evolution.n except the K_t regression ``kt_*``
    (at each n of its grid): method ``nn`` for the network's metrics and the epoch, ``entk``
    for kernel metrics; ``angular_velocity`` at the start step of its grid interval,
    ``decade_angle`` at the start of its decade."""
    ev, w, exp = cfg.evolution, cfg.arch.width, cfg.experiment
    rows = []
    for t, e, rec in zip(series["steps"], series["epochs"], series["metrics"]):
        rows.append(row(exp, "nn", ev.n, w, seed, t, "epoch", e))
        for m, v in rec.items():
            if m == "kt":
                for r in v:
                    for k in ("test_mse", "test_error", "ridge", "jitter"):
                        rows.append(row(exp, "entk", r["n"], w, seed, t, f"kt_{k}", r[k]))
            else:
                rows.append(row(exp, "nn" if m.startswith("nn_") else "entk", ev.n, w, seed, t, m, v))
    for t, v in zip(series["grid"], series["motion"]["omega"]):
        rows.append(row(exp, "entk", ev.n, w, seed, t, "angular_velocity", v))
    for a, _, th in series["decades"]:
        rows.append(row(exp, "entk", ev.n, w, seed, a, "decade_angle", th))
    return rows


def _kt_at(rec: dict[str, Any], n: int, key: str) -> float:
    return next((r[key] for r in rec["kt"] if r["n"] == n), math.nan)


#: The numbers a report shows first: how far and how fast the kernel turned, early and late.
HEADLINE_KEYS = (
    "total_angle",
    "angular_speed_first_half",
    "angular_speed_second_half",
    "second_over_first_half",
    "last_decade_angle",
    "last_decade_over_max_decade",
)
SUMMARY_KEYS = (
    "total_angle",
    "path_angle",
    "angular_speed_first_half",
    "angular_speed_second_half",
    "angular_velocity_peak",
    "angular_velocity_peak_epoch",
    "last_decade_angle",
    "angle_epoch1_to_final",
    "epoch1_checkpoint_epoch",
    "final_distance_to_init",
    "initial_alignment",
    "final_alignment",
    "initial_eff_rank",
    "final_eff_rank",
    "kt_regression_test_loss_init",
    "kt_regression_test_loss_final",
    "kt_regression_test_error_init",
    "kt_regression_test_error_final",
    "nn_test_loss_final",
    "nn_test_error_final",
    "nn_train_loss_final",
    "nn_train_error_final",
    "final_epoch",
)


def seed_summary(cfg: KernelEvolutionConfig, series: dict[str, Any]) -> dict[str, Any]:
    """The summary numbers of one repetition."""
    last, first = series["metrics"][-1], series["metrics"][0]
    mo, r = series["motion"], cfg.evolution.regress_n
    dec = [th for _, _, th in series["decades"]]
    return {
        "verdict": mo["verdict"],
        "verdict_half_resolution": series["half_resolution"].get("verdict"),
        "half_resolution_speeds": [
            series["half_resolution"].get(k, math.nan) for k in ("first_half", "second_half")
        ],
        "total_angle": mo["total_angle"],
        "path_angle": mo["path_angle"],
        "angular_speed_first_half": mo["first_half"],
        "angular_speed_second_half": mo["second_half"],
        "second_over_first_half": mo["second_over_first"],
        "angular_velocity_peak": mo["peak"],
        "angular_velocity_peak_epoch": mo["peak_epoch"],
        "last_decade_angle": dec[-1] if dec else math.nan,
        "last_decade_over_max_decade": decade_ratio(dec),
        "angle_epoch1_to_final": series["epoch1"]["angle_to_final"],
        "epoch1_checkpoint_epoch": series["epoch1"]["epoch"],
        "final_distance_to_init": last.get("distance_to_init", math.nan),
        "initial_alignment": first["alignment"],
        "final_alignment": last["alignment"],
        "initial_eff_rank": first["eff_rank"],
        "final_eff_rank": last["eff_rank"],
        "kt_regression_test_loss_init": _kt_at(first, r, "test_mse"),
        "kt_regression_test_loss_final": _kt_at(last, r, "test_mse"),
        "kt_regression_test_error_init": _kt_at(first, r, "test_error"),
        "kt_regression_test_error_final": _kt_at(last, r, "test_error"),
        "nn_test_loss_final": last["nn_test_mse"],
        "nn_test_error_final": last["nn_test_error"],
        "nn_train_loss_final": last["nn_train_mse"],
        "nn_train_error_final": last["nn_train_error"],
        "final_epoch": series["epochs"][-1],
        "decade_angles": [{"from_step": a, "to_step": b, "angle": th} for a, b, th in series["decades"]],
        "milestones": series["milestones"],
    }


def mean_decades(cfg: KernelEvolutionConfig, per_seed: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Decade angles averaged over repetitions: {from_step, to_step, from_epoch, to_epoch, angle}."""
    pts = decade_points(cfg)
    out = []
    for a, b in zip(pts, pts[1:]):
        vals = [
            d["angle"]
            for p in per_seed
            for d in p["decade_angles"]
            if d["from_step"] == a and d["to_step"] == b
        ]
        if vals:
            out.append(
                {
                    "from_step": a,
                    "to_step": b,
                    "from_epoch": epoch_at(cfg, a),
                    "to_epoch": epoch_at(cfg, b),
                    "angle": finite_mean(vals),
                }
            )
    return out


def kt_exponents(cfg: KernelEvolutionConfig, series_list: Sequence[dict[str, Any]]) -> list[dict[str, float]]:
    """α(t) of kernel regression with K_t over the ``kt`` grid, at every checkpoint, with the
    bootstrap CI of :func:`ntklab.scaling.fit_with_ci` (None where the fit has too few degrees
    of freedom for one; α NaN with fewer than 2 grid points)."""
    grid, metric, fc = kt_grid(cfg), cfg.fit.metric, cfg.fit
    out = []
    for t in checkpoint_steps(cfg):
        losses = np.full((len(series_list), len(grid)), np.nan)
        for i, ser in enumerate(series_list):
            if t in ser["steps"]:
                rec = ser["metrics"][ser["steps"].index(t)]
                losses[i] = [_kt_at(rec, n, metric) for n in grid]
        ok = np.isfinite(np.nanmean(losses, 0)) if len(series_list) else np.zeros(len(grid), bool)
        ok &= np.asarray(grid) >= fit_floor(fc, "kt")
        if ok.sum() >= 2 and np.all(np.nanmean(losses[:, ok], 0) > 0):
            fit = fit_with_ci(
                np.asarray(grid)[ok],
                losses[:, ok],
                offset=False,
                n_boot=fc.bootstrap,
                ci=fc.ci,
                seed=cfg.seed,
            )
            a, lo, hi = fit.alpha, fit.ci_low, fit.ci_high
        elif not ok.any():
            continue
        else:
            a = lo = hi = math.nan
        out.append({"step": t, "epoch": epoch_at(cfg, t), "alpha": a, "ci_low": lo, "ci_high": hi})
    return out


def analyze(
    cfg: KernelEvolutionConfig, results: dict[str, Any], ctx: Any
) -> tuple[list[dict], dict[str, Any]]:
    """Tidy rows and the summary's ``evolution`` (means over repetitions) from unit results.

    Repetitions without a training result are skipped, as are checkpoints without a kernel.
    The verdict is :func:`classify` on the seed means of Θ, ω̄₁ and ω̄₂.
    """
    ev = cfg.evolution
    rows: list[dict] = []
    per_seed: list[dict[str, Any]] = []
    series_list: list[dict[str, Any]] = []
    for i in range(cfg.seeds):
        trained = results.get(train_unit(cfg, i).key)
        if trained is None:
            continue
        kernels = {
            t: k for t in trained["steps"] if (k := results.get(kernel_unit(cfg, i, t).key)) is not None
        }
        if not kernels:
            continue
        series = seed_series(cfg, i, trained, kernels, ctx)
        series_list.append(series)
        rows += seed_rows(cfg, i, series)
        per_seed.append({"seed": i, **seed_summary(cfg, series)})
    # every key is present (NaN when no repetition finished), so summaries always share keys
    evolution: dict[str, Any] = {k: finite_mean([p[k] for p in per_seed]) for k in SUMMARY_KEYS}
    first, second = evolution["angular_speed_first_half"], evolution["angular_speed_second_half"]
    decades = mean_decades(cfg, per_seed)
    evolution.update(
        {
            "verdict": classify(evolution["total_angle"], first, second),
            "verdict_half_resolution": classify(
                evolution["total_angle"],
                finite_mean([p["half_resolution_speeds"][0] for p in per_seed]),
                finite_mean([p["half_resolution_speeds"][1] for p in per_seed]),
            ),
            "second_over_first_half": second / first if first > 0 else math.nan,
            "last_decade_over_max_decade": decade_ratio([d["angle"] for d in decades]),
            "lazy_angle": LAZY_ANGLE,
            "keeps_moving_ratio": KEEPS_MOVING,
            "decade_turn_ratio": DECADE_TURN,
            "decade_angles": decades,
            "kt_grid": kt_grid(cfg),
            "kt_exponents": kt_exponents(cfg, series_list),
            "steps": cfg.train.total_steps(ev.n),
            "seeds_done": len(per_seed),
            "n": ev.n,
            "regress_n": ev.regress_n,
            "probe_train": ev.probe_train,
            "probe_test": ev.probe_test,
            "kernel_mode": cfg.kernel.mode,
            "notes": (
                "angles θ(K, K') = arccos of the kernels' cosine on the probe set; angular_velocity "
                "ω = θ / dt (rad/epoch) on the evenly spaced grid only (equal intervals); "
                "angular_speed_first/second_half = Σθ / Σdt over the first/last half of the grid; "
                "total_angle = θ(K_0, K_T); verdict: barely-moves if total_angle < lazy_angle, "
                "keeps-moving if second/first half >= keeps_moving_ratio, else settles (on a linear "
                "time axis; decade_angles = θ(K_t, K_10t) for the log axis); kt_* regress with K_t "
                f"on the first n of the network's n = {ev.n} training points for n in kt_grid, on the "
                "same test set as nn_*; kt_exponents: α(t) of fit.metric over kt_grid; values are "
                "means over seeds (see per_seed)"
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
            "epochs": [epoch_at(cfg, t) for t in steps],
            "grid_steps": grid_steps(cfg),
            "decade_steps": decade_points(cfg),
            "milestone_steps": milestone_steps(cfg),
        },
    }
    return rows, summary


def figures(cfg: KernelEvolutionConfig, rows: list[dict], summary: dict, out_dir: Path) -> list[Path]:
    """Kernel motion, alignment, K_t regression and α(t) vs network, spectrum — against epochs."""
    from ntklab.report.evolution_figures import evolution_figures

    title = f"{cfg.data.name}: {arch_label(cfg.arch, width=True)}, n={cfg.evolution.n}"
    return evolution_figures(rows, summary, Path(out_dir), title=title)


def findings(summary: dict[str, Any]) -> list[Verdict]:
    """The verdicts of a ``kernel-evolution`` summary (:mod:`ntklab.report.verdicts.kernel_evolution`)."""
    from ntklab.report.verdicts.kernel_evolution import kernel_evolution

    return kernel_evolution(summary)
