"""Experiment ``width-scaling``: data scaling at several widths, and the eNTK→NTK distance.

For every width w of ``widths`` and every repetition (Vyas, Bansal & Nakkiran, arXiv
2206.10012, §3.2):

* method ``nn@wW``: the network of width w trained on the first n samples, for every n of the
  grid (the units of ``data-scaling``, shared through the store);
* method ``entk@wW``: kernel regression with its eNTK at initialization, computed once on the
  largest n plus the validation and test points and sliced for every smaller n;
* method ``ntk`` (and ``nngp``): the infinite-width kernels, one curve (in the ``ntk``
  parameterization they do not depend on the width).

Each curve is fitted by L(n) ≈ a·n^(−α) (``exponents``). On a fixed probe set P (the first
``probe_size`` training points) the eNTK at init of every width of ``widths`` and
``probe_widths`` is compared with the infinite NTK:

    d(w) = ‖Θ_w(P, P) − Θ_∞(P, P)‖_F / ‖Θ_∞(P, P)‖_F      (relative Frobenius distance),

reported per width (mean over repetitions, ``entk_to_ntk_distance``), together with the slope
s of log d = log c + s·log w (finite-width theory: s ≈ −1/2) with a bootstrap CI over
repetitions and widths, and the cosine distance S(Θ_w, Θ_∞) = 1 − ⟨Θ_w, Θ_∞⟩_F /
(‖Θ_w‖_F ‖Θ_∞‖_F) (rows ``entk_to_ntk_cosine_distance``). For ``kernel.mode = "logit-sum"``
the eNTK Σ_{c,d} Θ_cd tends to C·Θ_∞, so it is divided by C first; ``trace`` and ``single``
tend to Θ_∞ itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from ntklab.config.base import SCALING_TRAIN, BaseExperiment
from ntklab.config.sections import ArchConfig, DataConfig, PositiveInt, TrainConfig
from ntklab.experiments.common import arch_arg, arch_label, init_model, unit_reads
from ntklab.experiments.data_scaling import (
    common_summary,
    entk_unit,
    infinite_result,
    infinite_units,
    kernel_rows,
    nn_rows,
    train_unit,
)
from ntklab.experiments.tidy import differences, exponents, row, seed_means
from ntklab.experiments.units import arch_of, entk_kernel_fn, train_on
from ntklab.kernels.empirical.mode import Mode
from ntklab.kernels.metrics import kernel_distance, relative_error
from ntklab.run.units import Unit
from ntklab.scaling import fit_with_ci

if TYPE_CHECKING:
    from ntklab.report.verdicts.comparisons import Verdict

NAME = "width-scaling"
TITLE = "Width scaling: eNTK at init across widths"
DISTANCE = "entk_to_ntk_distance"
COSINE = "entk_to_ntk_cosine_distance"


class WidthScalingConfig(BaseExperiment):
    """Data scaling at several widths, and eNTK-to-NTK distance vs width.

    Training: the scaling rule (Adam, 100 epochs with a floor of 600 steps, early stopping),
    with each width's learning rate chosen on validation from ``lr_grid`` (one network per
    width and lr, repetition 0, at the largest n): Adam moves every weight by about lr per step,
    so in the ntk parameterization the function moves faster the wider the network, and one lr
    does not train every width well (a fixed SGD lr 0.5 left test MSE 0.48–0.64 at n = 1024).
    An empty ``lr_grid`` trains every width at ``train.lr``.

    Defaults: ``widths`` (network, eNTK and regression across the n grid 64..1024) stop at 64,
    and the wider ``probe_widths`` (128..1024) add only the eNTK→NTK distance on the probe set
    (no training, no regression); 500 test points. With width 128 trained as well the default
    took 11.8 min on 2 cores (its trainings and lr choice were 40 % of the work) and its
    exponents matched width 64's (nn α 0.291 against 0.288, eNTK 0.201 against 0.194); without
    it, 5.4 min. The paper-scale sweep is
    ``widths = [16, 32, 64, 128, 256, 512]`` with the base data defaults (hours on CPU: a
    width-512 eNTK on 4096 + 1256 points alone is ~10^14 flops).
    """

    experiment: Literal["width-scaling"] = "width-scaling"
    widths: list[PositiveInt] = [16, 32, 64]  # full data scaling (nn, entk) at each width
    probe_widths: list[PositiveInt] = [128, 256, 512, 1024]  # extra widths: eNTK→NTK distance only
    probe_size: PositiveInt = 256  # the first probe_size training points: eNTK→NTK distance
    lr_grid: list[Annotated[float, Field(gt=0, le=100)]] = [0.01, 0.03, 0.1]  # per width, on validation
    methods: list[Literal["nn", "entk", "ntk", "nngp"]] = ["nn", "entk", "ntk"]
    seeds: Annotated[int, Field(ge=1, le=1000)] = 2
    data: DataConfig = DataConfig(n_max=1024, n_val=128, n_test=500)
    train: TrainConfig = SCALING_TRAIN.model_copy(update={"min_steps": 600})

    @model_validator(mode="after")
    def _widths(self) -> WidthScalingConfig:
        if self.arch.layers is not None or self.arch.factory is not None:
            raise ValueError(
                "width-scaling varies arch.width, so it needs a zoo architecture (arch.name), "
                "not arch.layers or arch.factory"
            )
        if self.arch.parameterization == "standard" and {"ntk", "nngp"} & set(self.methods):
            raise ValueError(
                "width-scaling compares every width with one infinite-width kernel, which needs "
                "arch.parameterization = 'ntk' (in the standard parameterization the NTK grows with "
                "the width); use it or drop ntk and nngp from methods"
            )
        self.require_scalar_kernel("regresses with one scalar kernel per width")
        if self.probe_size > self.data.n_max:
            raise ValueError(
                f"probe_size ({self.probe_size}) must be at most data.n_max ({self.data.n_max}): "
                "the probe set is the first probe_size training points"
            )
        self.widths = sorted(set(self.widths))
        self.probe_widths = sorted(set(self.probe_widths) - set(self.widths))
        return self


CONFIG = WidthScalingConfig


def method(base: str, width: int) -> str:
    """Method name of ``base`` (``nn``, ``entk``) at ``width``: ``nn@w64``."""
    return f"{base}@w{width}"


def at_width(cfg: WidthScalingConfig, width: int) -> ArchConfig:
    """The config's architecture at ``width``: at ``arch.width`` itself the very architecture
    ``data-scaling`` builds, so its units are data-scaling's (one stored result serves both)."""
    return cfg.arch.model_copy(update={"width": width})


def has_distance(cfg: WidthScalingConfig) -> bool:
    """Whether the eNTK→NTK distance is measured (needs the ``ntk`` parameterization)."""
    return cfg.arch.parameterization == "ntk"


# ----------------------------------------------------------------------------- units


def entk_probe(
    ctx: Any, n: int, seed_index: int, arch: dict[str, Any] | None = None
) -> dict[str, np.ndarray]:
    """Unit: the eNTK at init of the network ``arch`` (:func:`~ntklab.experiments.units.arch_of`)
    of repetition ``seed_index`` on train[:n] only (no cross block)."""
    model = init_model(ctx, seed_index, arch_of(ctx, arch))
    xt = ctx.tensor(ctx.seed_splits(seed_index).x_train[:n])
    return {"train": entk_kernel_fn(ctx, model)(xt, None).cpu().numpy()}


def choose_lr(ctx: Any, n: int, arch: dict[str, Any], lrs: list[float]) -> dict[str, Any]:
    """Unit: the learning rate of ``lrs`` whose network ``arch`` (repetition 0, n samples, the
    config's training rule) reaches the lowest validation loss; ``{"lr", "lrs", "val_loss"}``."""
    val = []
    for lr in lrs:
        res = train_on(ctx, arch_of(ctx, arch), n, 0, lr=lr)
        losses = [h["val_loss"] for h in res.val_history if np.isfinite(h["val_loss"])]
        val.append(min(losses) if losses else float("inf"))
    return {"lr": float(lrs[int(np.argmin(val))]), "lrs": list(lrs), "val_loss": val}


def lr_unit(cfg: WidthScalingConfig, width: int) -> Unit | None:
    """The unit choosing width ``width``'s learning rate on validation (None without
    ``lr_grid``): trained on the largest n, where under-training shows most."""
    if not cfg.lr_grid:
        return None
    args = {"n": cfg.data.n_max, "arch": arch_arg(at_width(cfg, width)), "lrs": list(cfg.lr_grid)}
    return Unit(
        "train",
        "ntklab.experiments.width_scaling:choose_lr",
        args,
        unit_reads(cfg, arch=False, train=True),
        label=f"choose lr w={width} from {list(cfg.lr_grid)}",
    )


def network_unit(cfg: WidthScalingConfig, n: int, seed_index: int, width: int) -> Unit:
    """The network of width ``width`` at n, with its width's chosen learning rate."""
    return train_unit(cfg, at_width(cfg, width), n, seed_index, lr_from=lr_unit(cfg, width))


def probe_unit(cfg: WidthScalingConfig, seed_index: int, width: int) -> Unit:
    """eNTK at init on the probe set only, for widths without a full eNTK unit."""
    arch = at_width(cfg, width)
    args = {"n": cfg.probe_size, "seed_index": seed_index, "arch": arch_arg(arch)}
    return Unit(
        "entk",
        "ntklab.experiments.width_scaling:entk_probe",
        args,
        unit_reads(cfg, arch=False, kernel=True),
        version=2,
        label=f"eNTK probe n={cfg.probe_size} seed={seed_index} w={width}",
    )


def reference(cfg: WidthScalingConfig) -> tuple[int, bool] | None:
    """(n, cross) of the infinite kernels: the largest n with the evaluation points for the
    ``ntk``/``nngp`` curves, else the probe set alone for the distance (None: neither wanted)."""
    if {"ntk", "nngp"} & set(cfg.methods):
        return cfg.data.n_max, True
    if has_distance(cfg):
        return cfg.probe_size, False
    return None


def reference_units(cfg: WidthScalingConfig, seed_index: int) -> list[Unit]:
    """The blocks of the infinite kernels of :func:`reference` on repetition ``seed_index``'s
    points (none when not wanted)."""
    ref = reference(cfg)
    return infinite_units(cfg, ref[0], seed_index, ref[1]) if ref is not None else []


def init_kernel_unit(cfg: WidthScalingConfig, seed_index: int, width: int) -> Unit | None:
    """The unit whose result holds the eNTK at init of ``width`` on the probe set."""
    if width in cfg.widths and "entk" in cfg.methods:
        return entk_unit(cfg, at_width(cfg, width), cfg.data.n_max, seed_index)
    if has_distance(cfg):
        return probe_unit(cfg, seed_index, width)
    return None


def plan(cfg: WidthScalingConfig) -> list[Unit]:
    """Every unit: the infinite kernels, then per width (narrowest first) eNTKs and networks,
    then the probe-only eNTKs of ``probe_widths``."""
    grid = cfg.data.n_grid()
    units: list[Unit] = []
    for i in range(cfg.seeds):
        units += reference_units(cfg, i)
    for w in cfg.widths:
        tune = lr_unit(cfg, w) if "nn" in cfg.methods else None
        if tune is not None:
            units.append(tune)
        for i in range(cfg.seeds):
            k = init_kernel_unit(cfg, i, w)
            if k is not None:
                units.append(k)
            if "nn" in cfg.methods:
                units += [network_unit(cfg, n, i, w) for n in grid]
    for w in cfg.probe_widths:
        for i in range(cfg.seeds):
            k = init_kernel_unit(cfg, i, w)
            if k is not None:
                units.append(k)
    return units


# ----------------------------------------------------------------------------- analysis


def comparable(k: np.ndarray, mode: str, num_outputs: int) -> np.ndarray:
    """The eNTK on the scale of the infinite NTK: Θ/C for ``logit-sum``, else Θ."""
    return k / Mode(mode, num_outputs).infinite_scale


def distance_slope(rows: list[dict[str, Any]], cfg: WidthScalingConfig) -> dict[str, float] | None:
    """Slope s of log d = log c + s log w with its bootstrap CI (repetitions and widths)."""
    sel = [r for r in rows if r["metric"] == DISTANCE]
    widths = sorted({r["width"] for r in sel})
    seeds = sorted({r["seed"] for r in sel})
    if len(widths) < 2:
        return None
    table = np.full((len(seeds), len(widths)), np.nan)
    for r in sel:
        table[seeds.index(r["seed"]), widths.index(r["width"])] = r["value"]
    if not np.all(np.isfinite(np.nanmean(table, 0))) or np.any(np.nanmean(table, 0) <= 0):
        return None
    fit = fit_with_ci(np.array(widths), table, n_boot=cfg.fit.bootstrap, ci=cfg.fit.ci, seed=cfg.seed)
    ci = (None, None) if fit.ci_low is None else (-fit.ci_high, -fit.ci_low)
    return {"slope": -fit.alpha, "ci_low": ci[0], "ci_high": ci[1], "c": fit.a}


def analyze(cfg: WidthScalingConfig, results: dict[str, Any], ctx: Any) -> tuple[list[dict], dict[str, Any]]:
    """Tidy rows and the summary (missing units are skipped).

    Summary keys: ``exponents`` (methods ``nn@wW``, ``entk@wW``, ``ntk``, ``nngp``),
    ``entk_to_ntk_distance`` {"W": mean d}, ``entk_to_ntk_distance_slope`` {slope, ci_low,
    ci_high, c}, ``test_loss_at_n_max`` {method: mean loss at the largest n}, ``per_width``
    {"W": α of nn and entk, d, losses at the largest n}, ``widths``, ``probe_widths``,
    ``probe_size``, ``n_grid``.
    """
    grid, p = cfg.data.n_grid(), cfg.probe_size
    rows: list[dict] = []
    spec = reference(cfg)
    ntk_probe: dict[int, np.ndarray] = {}
    for i in range(cfg.seeds):
        ref = infinite_result(cfg, spec[0], i, results, spec[1], ctx) if spec is not None else None
        if ref is not None and spec[1]:
            for m in ("ntk", "nngp"):
                if m in cfg.methods:
                    rows += kernel_rows(cfg, ctx, m, ref[m], i, 0, grid)
        if ref is not None and has_distance(cfg):
            ntk_probe[i] = ref["ntk"]["train"][:p, :p]

    def distance_rows(k: dict | None, i: int, w: int) -> list[dict]:
        if k is None or i not in ntk_probe:
            return []
        ent = comparable(k["train"][:p, :p], cfg.kernel.mode, ctx.splits.num_outputs)
        ref_p = ntk_probe[i]
        return [
            row(cfg.experiment, method("entk", w), p, w, i, -1, DISTANCE, relative_error(ent, ref_p)),
            row(cfg.experiment, method("entk", w), p, w, i, -1, COSINE, kernel_distance(ent, ref_p)),
        ]

    for w in cfg.widths:
        for i in range(cfg.seeds):
            ku = init_kernel_unit(cfg, i, w)
            k = results.get(ku.key) if ku is not None else None
            if k is not None and "entk" in cfg.methods:
                rows += kernel_rows(cfg, ctx, method("entk", w), k, i, w, grid)
            rows += distance_rows(k, i, w)
            if "nn" in cfg.methods:
                for n in grid:
                    r = results.get(network_unit(cfg, n, i, w).key)
                    if r is not None:
                        rows += nn_rows(cfg, method("nn", w), r, n, i, w)
    for w in cfg.probe_widths:
        for i in range(cfg.seeds):
            ku = init_kernel_unit(cfg, i, w)
            rows += distance_rows(results.get(ku.key) if ku is not None else None, i, w)

    exps = exponents(rows, cfg.fit, cfg.seed)
    diffs: dict[str, dict[str, Any]] = {}
    for w in cfg.widths:
        others = [method("entk", w), "ntk", "nngp"]
        diffs |= differences(rows, cfg.fit, cfg.seed, reference=method("nn", w), methods=others)
    distances = {str(w): d for w, d in seed_means(rows, "width", metric=DISTANCE).items()}
    shared = common_summary(cfg, rows)
    at_max = shared["test_loss_at_n_max"]
    per_width: dict[str, dict[str, Any]] = {}
    for w in cfg.widths:
        entry: dict[str, Any] = {}
        for base in ("nn", "entk"):
            if method(base, w) in exps:
                entry[f"alpha_{base}"] = exps[method(base, w)]
            if method(base, w) in at_max:
                entry[f"{base}_test_loss_at_n_max"] = at_max[method(base, w)]
        if str(w) in distances:
            entry[DISTANCE] = distances[str(w)]
        tune = lr_unit(cfg, w)
        if tune is not None and tune.key in results:
            entry["lr"] = results[tune.key]["lr"]
            entry["lr_val_loss"] = dict(
                zip(map(str, results[tune.key]["lrs"]), results[tune.key]["val_loss"])
            )
        per_width[str(w)] = entry
    summary = {
        "exponents": exps,
        "differences": diffs,
        **shared,
        DISTANCE: distances,
        f"{DISTANCE}_slope": distance_slope(rows, cfg),
        "per_width": per_width,
        "widths": cfg.widths,
        "probe_widths": cfg.probe_widths,
        "probe_size": p,
    }
    return rows, summary


def figures(cfg: WidthScalingConfig, rows: list[dict], summary: dict, out_dir: Path) -> list[Path]:
    """Loss vs n per width (one panel per method), α vs width, eNTK→NTK distance vs width."""
    from ntklab.report.experiment_figures import (
        alpha_width_figure,
        distance_width_figure,
        width_scaling_figure,
    )

    out_dir = Path(out_dir)
    title = f"{cfg.data.name}: {arch_label(cfg.arch)}"
    paths: list[Path] = []
    if any(r["metric"] == cfg.fit.metric for r in rows):
        paths.append(
            width_scaling_figure(
                rows, summary["exponents"], cfg.fit.metric, cfg.widths, out_dir / "width_scaling.png", title
            )
        )
    if any(m.split("@")[0] in ("nn", "entk") for m in summary["exponents"]):
        paths.append(
            alpha_width_figure(summary["exponents"], cfg.widths, out_dir / "alpha_vs_width.png", title)
        )
    if any(r["metric"] == DISTANCE for r in rows):
        paths.append(
            distance_width_figure(
                rows,
                DISTANCE,
                summary.get(f"{DISTANCE}_slope"),
                out_dir / "entk_ntk_distance.png",
                title + f" (probe: first {cfg.probe_size} training points)",
            )
        )
    return paths


def findings(summary: dict[str, Any]) -> list[Verdict]:
    """The verdicts of a ``width-scaling`` summary (:mod:`ntklab.report.verdicts.width_scaling`)."""
    from ntklab.report.verdicts.width_scaling import width_scaling

    return width_scaling(summary)
