"""One config class per experiment, on the shared tables of :mod:`ntklab.config.sections`.

The top-level key ``experiment`` selects the class (and so the defaults): ``data-scaling``
(default), ``width-scaling``, ``pretrained-kernel``, ``kernel-evolution`` (:data:`EXPERIMENTS`).
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from ntklab.config.sections import (
    ArchConfig,
    DataConfig,
    FitConfig,
    KernelConfig,
    PositiveInt,
    Section,
    TrainConfig,
)


class BaseExperiment(Section):
    """Fields shared by every experiment."""

    experiment: str
    seed: Annotated[int, Field(ge=0)] = 0  # every random choice derives from this
    seeds: Annotated[int, Field(ge=1, le=1000)] = 3  # repetitions (init and batch order)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataConfig = DataConfig()
    arch: ArchConfig = ArchConfig()
    train: TrainConfig = TrainConfig()
    kernel: KernelConfig = KernelConfig()
    fit: FitConfig = FitConfig()
    methods: list[Literal["nn", "entk", "ntk", "nngp"]] = ["nn", "entk"]

    @model_validator(mode="after")
    def _methods(self) -> BaseExperiment:
        if self.arch.factory is not None and {"ntk", "nngp"} & set(self.methods):
            raise ValueError(
                "methods ntk and nngp need an architecture from ntklab's spec (arch.name or arch.layers), "
                "not arch.factory"
            )
        return self

    def digest(self) -> str:
        """A short hash of the resolved config."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _experiment_section_defaults(cls: type[BaseExperiment], data: Any) -> Any:
    """Merge a raw section table over the experiment's own section defaults.

    An experiment may default a section differently from the base (``data: DataConfig =
    DataConfig(n_max=1024)``); without this, a file or ``--set`` that names any key of that
    section would rebuild it from the *base* defaults and silently drop the experiment's.
    """
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for name, field in cls.model_fields.items():
        default = field.default
        if isinstance(default, Section) and isinstance(out.get(name), dict):
            base = default.model_dump(mode="json", exclude_unset=True)
            for a, b in EXCLUSIVE:  # the user's choice of one drops the default of the other
                if a in out[name] and b not in out[name]:
                    base.pop(b, None)
            out[name] = {**base, **out[name]}
    return out


#: Keys of which a config gives one: a section that sets one drops the default of the other.
EXCLUSIVE = (("steps", "epochs"), ("epochs", "steps"))


#: The training rule of the scaling experiments: Adam at lr 0.03 with a cosine schedule,
#: 100 epochs with a floor of 1000 steps (batch 128), early stopping on the validation split
#: with the best-validation weights kept. Training grows with n, so the largest sets are not
#: under-fitted (a fixed 1500 steps left n = 4096 at train MSE 0.24), small sets get enough
#: updates (120 epochs at n = 512 left train MSE 0.41), and early stopping ends them before
#: they over-fit.
SCALING_TRAIN = TrainConfig(
    optimizer="adam", lr=0.03, steps=None, epochs=100, min_steps=1000, early_stopping=True
)


def _scalar_kernel(cfg: BaseExperiment, experiment: str, why: str) -> None:
    """Refuse ``kernel.mode = "full"`` where an experiment regresses with a scalar kernel."""
    if cfg.kernel.mode == "full":
        raise ValueError(f"{experiment} {why}: kernel.mode must be trace, logit-sum or single, not full")


class DataScalingConfig(BaseExperiment):
    """Test loss vs n for the network and kernel regression with its kernels.

    The network trains by :data:`SCALING_TRAIN`: on the default cnn1d (width 32) on MNIST-1D
    it reaches ≈ 3 % test error at n = 4096, where a fixed 1500 steps left it under-fitted
    (train MSE 0.24) and SGD at lr 0.5 stalls near 27 %. Adam moves every weight by about lr
    per step, so in the ntk parameterization a much wider network needs a smaller lr, or
    ``train.optimizer = "sgd"``.
    """

    experiment: Literal["data-scaling"] = "data-scaling"
    train: TrainConfig = SCALING_TRAIN

    _section_defaults = model_validator(mode="before")(classmethod(_experiment_section_defaults))

    @model_validator(mode="after")
    def _mode(self) -> DataScalingConfig:
        _scalar_kernel(self, "data-scaling", "regresses every method's targets with one (n, n) kernel")
        return self


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

    _section_defaults = model_validator(mode="before")(classmethod(_experiment_section_defaults))

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
        _scalar_kernel(self, "width-scaling", "regresses with one scalar kernel per width")
        if self.probe_size > self.data.n_max:
            raise ValueError(
                f"probe_size ({self.probe_size}) must be at most data.n_max ({self.data.n_max}): "
                "the probe set is the first probe_size training points"
            )
        self.widths = sorted(set(self.widths))
        self.probe_widths = sorted(set(self.probe_widths) - set(self.widths))
        return self


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

    _section_defaults = model_validator(mode="before")(classmethod(_experiment_section_defaults))

    @model_validator(mode="after")
    def _pretrained(self) -> PretrainedKernelConfig:
        short = [n0 for n0 in self.pretrained.n0 if sum(n >= n0 for n in self.data.n_grid()) < 2]
        if short:
            raise ValueError(
                f"pretrained.n0 = {short[0]} leaves fewer than 2 grid points n >= n0 (the after-kernel "
                f"is fitted there); use n0 <= {self.data.n_grid()[-2]} or a larger data.n_max"
            )
        _scalar_kernel(self, "pretrained-kernel", "regresses with one scalar kernel")
        return self

    def pretrain_steps(self, n0: int) -> int:
        """Optimizer steps of the pre-training on n0 samples (see :class:`PretrainedConfig`)."""
        p = self.pretrained
        if p.steps is not None:
            return p.steps
        if p.epochs is not None:
            return max(1, math.ceil(p.epochs * n0 / min(self.train.batch_size, n0)))
        return self.train.total_steps(n0)


class EvolutionConfig(Section):
    """Checkpoints and probe set of the kernel-evolution experiment."""

    n: PositiveInt = 4096  # training-set size
    n_checkpoints: Annotated[int, Field(ge=3, le=1001)] = 17  # evenly spaced in steps, incl. 0 and the end
    decades: Annotated[int, Field(ge=0, le=9)] = 3  # also at end/10, end/100, ...: the angle per decade
    checkpoint_steps: list[Annotated[int, Field(ge=0)]] | None = None  # extra steps (not in ω)
    probe_train: PositiveInt = 512
    probe_test: PositiveInt = 512
    top_eigenvalues: PositiveInt = 10
    regress_n: PositiveInt = 1024  # K_t regression on the first regress_n training points (<= n)
    milestone_window: Annotated[float, Field(ge=0, lt=0.5)] = 0.02  # schedule "step": checkpoints
    # at each milestone and this fraction of training before/after it (0 = the milestone only)

    @model_validator(mode="after")
    def _sizes(self) -> EvolutionConfig:
        for key in ("regress_n", "probe_train"):
            if getattr(self, key) > self.n:
                raise ValueError(
                    f"evolution.{key} ({getattr(self, key)}) must be at most evolution.n ({self.n}): "
                    "its points are the first ones the network trains on"
                )
        return self


class KernelEvolutionConfig(BaseExperiment):
    """How the eNTK moves during training.

    The network trains to a fixed length, so that the checkpoints are evenly spaced over the
    whole of training: Adam at lr 0.03 with a cosine schedule (as data-scaling), 4000 steps at
    batch 128 (125 epochs on n = 4096). The default cnn1d (width 32) then ends near 3 % test
    error on MNIST-1D, well below kernel regression with its eNTK at init; a network stopped
    half-trained would make "the kernel keeps moving" unmeasurable.
    """

    experiment: Literal["kernel-evolution"] = "kernel-evolution"
    evolution: EvolutionConfig = EvolutionConfig()
    seeds: Annotated[int, Field(ge=1, le=1000)] = 1
    train: TrainConfig = TrainConfig(optimizer="adam", lr=0.03, steps=4000)
    # the K_t regression grid is the data grid up to evolution.regress_n: with factor √2 it has
    # 9 points on 64..1024, enough for α(t) and its interval from one repetition
    data: DataConfig = DataConfig(grid_factor=2**0.5)

    _section_defaults = model_validator(mode="before")(classmethod(_experiment_section_defaults))

    @model_validator(mode="after")
    def _evolution(self) -> KernelEvolutionConfig:
        if getattr(self.train, "early_stopping", False):
            raise ValueError(
                "kernel-evolution trains to a fixed length so that its checkpoints are evenly spaced: "
                "set train.early_stopping = false"
            )
        _scalar_kernel(self, "kernel-evolution", "compares one scalar kernel per checkpoint")
        total = self.train.total_steps(self.evolution.n)
        late = [s for s in self.evolution.checkpoint_steps or [] if s > total]
        if late:
            raise ValueError(
                f"evolution.checkpoint_steps has step {late[0]} after the end of training "
                f"({total} steps on evolution.n = {self.evolution.n} samples)"
            )
        if self.data.n_test is not None and self.evolution.probe_test > self.data.n_test:
            raise ValueError(
                f"evolution.probe_test ({self.evolution.probe_test}) must be at most data.n_test "
                f"({self.data.n_test})"
            )
        return self


EXPERIMENTS: dict[str, type[BaseExperiment]] = {
    "data-scaling": DataScalingConfig,
    "width-scaling": WidthScalingConfig,
    "pretrained-kernel": PretrainedKernelConfig,
    "kernel-evolution": KernelEvolutionConfig,
}

AnyConfig = DataScalingConfig | WidthScalingConfig | PretrainedKernelConfig | KernelEvolutionConfig
