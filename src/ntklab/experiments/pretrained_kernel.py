"""Experiment ``pretrained-kernel``: kernel regression with the after-kernel.

Vyas, Bansal & Nakkiran (arXiv 2206.10012, §4): train the network on the first n₀ samples for
T steps (``pretrained.steps`` / ``pretrained.epochs``, default the network's own training
length), take its eNTK there,

    Θ_T(x, x') = Σ_p ∂f(x; θ_T)/∂θ_p · ∂f(x'; θ_T)/∂θ_p,

and run kernel ridge regression f̂(x) = Θ_T(x, X)(Θ_T(X, X) + λ·(tr Θ_T / n)·I)⁻¹ Y on the
first n samples for every n of the grid (n smaller or larger than n₀: the n₀ pre-training
samples are the first n₀ of the same nested pool). Methods, one test-loss curve each, fitted by
L(n) ≈ a·n^(−α):

* ``nn``: the network trained from scratch on each n (units shared with ``data-scaling``);
* ``entk``: the eNTK at initialization; ``ntk`` (``nngp``): the infinite-width kernels;
* ``after_kernel@n0=N0``: the after-kernel of the network pre-trained on N0 samples, fixed,
  for every n (one per value of ``pretrained.n0``); its exponent is fitted on n ≥ N0 only
  (``fit_n_min``, ``fit_n_max`` beside ``alpha``), and with ``pretrained.disjoint`` the N0
  pre-training samples are disjoint from every regression set;
* ``after_kernel@n0=n`` (``pretrained.grow``): for each n the after-kernel of the network
  pre-trained on that same n; with the default pre-training length this is the eNTK of the
  very network of method ``nn`` at n, so its α shows whether the after-kernel keeps up with
  the network's.

The summary adds ``differences`` (paired bootstrap of α_nn − α_method for every method, and of
α_entk − α_after for every after-kernel, on the range both are fitted on), per after-kernel method ``alpha_minus_nn`` (α − α_nn), the mean test loss
table ``mean_loss`` {method: {n: L}}, the pre-trained networks' own test loss and the cosine
kernel distance S(Θ_T, Θ_0) = 1 − ⟨Θ_T, Θ_0⟩_F / (‖Θ_T‖_F ‖Θ_0‖_F) to the eNTK at init on the
first ``min(256, n_max)`` training points (how far the kernel moved).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, model_validator

from ntklab.config.base import SCALING_TRAIN, BaseExperiment
from ntklab.config.sections import DataConfig, PositiveInt, Section, TrainConfig
from ntklab.experiments import data_scaling
from ntklab.experiments.after_kernel import after_kernel_unit
from ntklab.experiments.common import arch_label, regress_grid
from ntklab.experiments.data_scaling import METRICS, entk_result, kernel_rows
from ntklab.experiments.tidy import differences, row, rows_from, scaling_summary, seed_means
from ntklab.experiments.units import NETWORK_METRICS
from ntklab.kernels.metrics import kernel_distance
from ntklab.run.units import Unit

if TYPE_CHECKING:
    from ntklab.report.verdicts.comparisons import Verdict

NAME = "pretrained-kernel"
TITLE = "Pre-trained kernel: the after-kernel"
GROW = "after_kernel@n0=n"
MOVE_PROBE = 256  # training points on which the after-kernel's distance to init is measured


class PretrainedConfig(Section):
    """The after-kernel: eNTK after training on n0 samples.

    Pre-training length: ``steps``, else ``epochs`` (steps = ⌈epochs · n0 / min(batch, n0)⌉),
    else the network's own (``train.steps`` / ``train.epochs``), so that the variant
    pre-trained on n0 = n trains exactly the network of method ``nn`` at n.
    """

    n0: list[PositiveInt] = [256]  # the fixed-n0 exponent is fitted on n >= n0
    epochs: Annotated[float, Field(gt=0)] | None = None  # pre-training length in epochs ...
    steps: Annotated[int, Field(ge=0)] | None = None  # ... or in optimizer steps (0 = init)
    grow: bool = True  # also the variant pre-trained on the same n as the regression
    disjoint: bool = False  # pre-train on samples disjoint from every regression set

    @model_validator(mode="after")
    def _length(self) -> PretrainedConfig:
        if self.epochs is not None and self.steps is not None:
            raise ValueError("set at most one of pretrained.epochs and pretrained.steps")
        self.n0 = sorted(set(self.n0))
        return self


class PretrainedKernelConfig(BaseExperiment):
    """Kernel regression with the eNTK after training on n0 samples.

    Defaults are sized for about 10 minutes on 2 CPU cores (~9 CPU-minutes of single-threaded
    units, the largest the infinite NTK on 2048 + 628 points): n grid 64..2048, 2 seeds, 500
    test points, 1500 Adam steps (lr 0.03, as data-scaling) at batch 32, width 32.
    """

    experiment: Literal["pretrained-kernel"] = "pretrained-kernel"
    pretrained: PretrainedConfig = PretrainedConfig()
    methods: list[Literal["nn", "entk", "ntk", "nngp"]] = ["nn", "entk", "ntk"]
    seeds: Annotated[int, Field(ge=1, le=1000)] = 2
    data: DataConfig = DataConfig(n_max=2048, n_val=128, n_test=500)
    train: TrainConfig = SCALING_TRAIN

    @model_validator(mode="after")
    def _pretrained(self) -> PretrainedKernelConfig:
        short = [n0 for n0 in self.pretrained.n0 if sum(n >= n0 for n in self.data.n_grid()) < 2]
        if short:
            raise ValueError(
                f"pretrained.n0 = {short[0]} leaves fewer than 2 grid points n >= n0 (the after-kernel "
                f"is fitted there); use n0 <= {self.data.n_grid()[-2]} or a larger data.n_max"
            )
        self.require_scalar_kernel("regresses with one scalar kernel")
        return self

    def largest_n(self) -> int:
        """Largest training-set size: the data grid's, or a larger pre-training set n0."""
        return max([self.data.n_max, *self.pretrained.n0])

    def pretrain_steps(self, n0: int) -> int:
        """Optimizer steps of the pre-training on n0 samples (see :class:`PretrainedConfig`)."""
        p = self.pretrained
        if p.steps is not None:
            return p.steps
        if p.epochs is not None:
            return max(1, math.ceil(p.epochs * n0 / min(self.train.batch_size, n0)))
        return self.train.total_steps(n0)


CONFIG = PretrainedKernelConfig


def fixed_method(n0: int) -> str:
    """Method name of the after-kernel pre-trained on n0 samples: ``after_kernel@n0=1024``."""
    return f"after_kernel@n0={n0}"


def fixed_unit(cfg: PretrainedKernelConfig, n0: int, seed_index: int) -> Unit:
    """After-kernel pre-trained on n0 (disjoint from the regression sets with
    ``pretrained.disjoint``), on the largest n of the grid."""
    return after_kernel_unit(
        cfg, n0, cfg.data.n_max, seed_index, cfg.pretrain_steps(n0), disjoint=cfg.pretrained.disjoint
    )


def grow_unit(cfg: PretrainedKernelConfig, n: int, seed_index: int) -> Unit:
    """After-kernel pre-trained on n, on the same n."""
    return after_kernel_unit(cfg, n, n, seed_index, cfg.pretrain_steps(n))


def fit_ranges(cfg: PretrainedKernelConfig) -> dict[str, int]:
    """The after-kernel pre-trained on n₀ is fitted on n ≥ n₀ only: below n₀ its kernel has
    already seen more labels than the regression, a different regime that would bias α."""
    return {fixed_method(n0): n0 for n0 in cfg.pretrained.n0}


kernel_files = data_scaling.kernel_files  # the same large kernels as data-scaling's, if any


def plan(cfg: PretrainedKernelConfig) -> list[Unit]:
    """Every unit: data-scaling's (infinite kernels, eNTK at init, networks), then per
    repetition the after-kernels."""
    units = data_scaling.plan(cfg)
    for i in range(cfg.seeds):
        units += [fixed_unit(cfg, n0, i) for n0 in cfg.pretrained.n0]
        if cfg.pretrained.grow:
            units += [grow_unit(cfg, n, i) for n in cfg.data.n_grid()]
    return units


def pretrain_rows(cfg: PretrainedKernelConfig, name: str, res: dict, n0: int, seed: int) -> list[dict]:
    """The pre-trained network's own metrics (``pretrain_*``, at n = n0, step = T)."""
    w = cfg.arch.width
    return [
        row(cfg.experiment, name, n0, w, seed, res["steps"], f"pretrain_{m}", res[m]) for m in NETWORK_METRICS
    ]


def analyze(
    cfg: PretrainedKernelConfig, results: dict[str, Any], ctx: Any
) -> tuple[list[dict], dict[str, Any]]:
    """Tidy rows and the summary (missing units are skipped)."""
    grid, n_max, w = cfg.data.n_grid(), cfg.data.n_max, cfg.arch.width
    q = min(MOVE_PROBE, n_max)
    rows = data_scaling.base_rows(cfg, results, ctx)
    for i in range(cfg.seeds):
        init = entk_result(cfg, ctx, cfg.arch, n_max, i, results) if "entk" in cfg.methods else None
        for n0 in cfg.pretrained.n0:
            res = results.get(fixed_unit(cfg, n0, i).key)
            if res is None:
                continue
            name = fixed_method(n0)
            rows += kernel_rows(cfg, ctx, name, res, i, w, grid)
            rows += pretrain_rows(cfg, name, res, n0, i)
            if init is not None:
                s = kernel_distance(res["train"][:q, :q], init["train"][:q, :q])
                rows.append(row(cfg.experiment, name, q, w, i, res["steps"], "kernel_distance_to_init", s))
        if cfg.pretrained.grow:
            for n in grid:
                res = results.get(grow_unit(cfg, n, i).key)
                if res is None:
                    continue
                (rec,) = regress_grid(
                    res["train"],
                    res["cross"],
                    ctx.seed_splits(i),
                    [n],
                    cfg.kernel,
                )
                rows += rows_from(cfg.experiment, GROW, w, i, rec, METRICS)
                rows += pretrain_rows(cfg, GROW, res, n, i)

    scaling = scaling_summary(rows, cfg.fit, cfg.seed, fit_ranges(cfg))
    exps = scaling["exponents"]
    after_methods = [m for m in exps if m.startswith("after_kernel@")]
    scaling["differences"] |= differences(
        rows, cfg.fit, cfg.seed, reference="entk", min_n=fit_ranges(cfg), methods=after_methods
    )
    methods = sorted({r["method"] for r in rows if r["metric"] == cfg.fit.metric})
    mean_loss = {}
    for m in methods:
        at_n = seed_means(rows, "n", method=m, metric=cfg.fit.metric)
        mean_loss[m] = {str(n): at_n[n] for n in grid if n in at_n}
    after = [m for m in exps if m.startswith("after_kernel@")]
    fixed = [fixed_method(n0) for n0 in cfg.pretrained.n0]
    moved_all = seed_means(rows, "method", metric="kernel_distance_to_init")
    pre_all = seed_means(rows, "method", metric=f"pretrain_{cfg.fit.metric}")
    moved = {m: moved_all[m] for m in fixed if m in moved_all}
    pre_loss = {m: pre_all[m] for m in fixed if m in pre_all}
    summary = {
        **scaling,
        "alpha_minus_nn": {m: exps[m]["alpha"] - exps["nn"]["alpha"] for m in after if "nn" in exps},
        "mean_loss": mean_loss,
        **data_scaling.common_summary(cfg, rows),
        "n0": cfg.pretrained.n0,
        "pretrain_steps": {str(n0): cfg.pretrain_steps(n0) for n0 in cfg.pretrained.n0},
        "grow_pretrain_steps": {str(n): cfg.pretrain_steps(n) for n in grid} if cfg.pretrained.grow else {},
        "pretrained_test_loss": pre_loss,
        "kernel_distance_to_init": moved,
        "kernel_distance_probe": q,
    }
    return rows, summary


def figures(cfg: PretrainedKernelConfig, rows: list[dict], summary: dict, out_dir: Path) -> list[Path]:
    """Test loss vs n of every method (n₀ marked), and α ± CI per method."""
    from ntklab.report.experiment_figures import pretrained_kernel_figure

    if not any(r["metric"] == cfg.fit.metric for r in rows):
        return []
    return [
        pretrained_kernel_figure(
            rows,
            summary["exponents"],
            cfg.fit.metric,
            cfg.pretrained.n0,
            Path(out_dir) / "pretrained_kernel.png",
            title=f"{cfg.data.name}: {arch_label(cfg.arch, width=True)}",
        )
    ]


def findings(summary: dict[str, Any]) -> list[Verdict]:
    """The verdicts of a ``pretrained-kernel`` summary (:mod:`ntklab.report.verdicts.pretrained_kernel`)."""
    from ntklab.report.verdicts.pretrained_kernel import pretrained_kernel

    return pretrained_kernel(summary)
