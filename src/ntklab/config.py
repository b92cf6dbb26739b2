"""Typed experiment configs (pydantic), loaded from TOML, with one-sentence errors.

Every field has a default and a range. The top-level key ``experiment`` selects the config class
(and so the defaults): ``data-scaling`` (default), ``width-scaling``, ``pretrained-kernel``,
``kernel-evolution``. ``--set dotted.key=value`` overrides are applied to the raw dictionary
before validation, so they are checked exactly like the file.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import tomli_w
import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ntklab.errors import ConfigError

PositiveInt = Annotated[int, Field(ge=1)]
DATASETS = ("mnist1d", "digits", "cifar10", "cifar5m", "svhn", "mnist", "fashion-mnist", "npz")
Ridge = Annotated[float, Field(ge=0)]


class Section(BaseModel):
    """A config table: unknown keys and wrong types are errors."""

    model_config = ConfigDict(extra="forbid", strict=False, validate_default=True)


class DataConfig(Section):
    """Dataset, splits and preprocessing."""

    name: str = "mnist1d"  # registry name: mnist1d, digits, cifar10, cifar5m, svhn, mnist, fashion-mnist
    path: str | None = None  # where the user keeps files for on-disk datasets
    num_samples: Annotated[int, Field(ge=100, le=1_000_000)] = 25_000  # mnist1d: generated (80% train)
    n_min: Annotated[int, Field(ge=2)] = 64  # smallest training-set size of the n grid
    n_max: Annotated[int, Field(ge=2)] = 4096  # largest; the grid is n_min·factor^k up to n_max
    grid_factor: Annotated[float, Field(gt=1, le=16)] = 2.0
    n_val: Annotated[int, Field(ge=0)] = 256  # validation split carved from the training pool
    n_test: Annotated[int, Field(ge=1)] | None = 1000  # first n_test of the fixed test set (None = all)
    classes: list[int | list[int]] | None = None  # class subset; each entry a label or a group
    standardize: Literal["feature", "channel", "none"] = "feature"
    zca: Annotated[float, Field(gt=0)] | None = None  # ZCA regularization strength (images)
    downsample: Annotated[int, Field(ge=1, le=64)] = 1  # average-pool images by this factor (32 -> 8 with 4)
    channels: Literal[1, 3] | None = None  # 3 repeats grayscale (MNIST) to RGB; 1 averages RGB to gray
    seed: Annotated[int, Field(ge=0)] = 0  # the pool permutation (nested subsets)

    @model_validator(mode="after")
    def _grid(self) -> DataConfig:
        if self.name not in DATASETS:
            close = difflib.get_close_matches(self.name, DATASETS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(
                f"unknown dataset data.name = {self.name!r}{hint}; allowed: {', '.join(DATASETS)}"
            )
        if self.name not in ("mnist1d", "digits") and self.path is None:
            raise ValueError(f"dataset {self.name} is read from disk: set data.path to where its files are")
        if self.n_min > self.n_max:
            raise ValueError(f"data.n_min ({self.n_min}) must be at most data.n_max ({self.n_max})")
        if self.classes is not None and len(self.classes) < 2:
            raise ValueError("data.classes must name at least 2 classes")
        return self

    def n_grid(self) -> list[int]:
        """Geometric grid n_min · factor^k (rounded), ending exactly at n_max."""
        k = math.floor(math.log(self.n_max / self.n_min) / math.log(self.grid_factor) + 1e-9)
        grid = sorted({round(self.n_min * self.grid_factor**i) for i in range(k + 1)} | {self.n_max})
        return grid


class ArchConfig(Section):
    """The architecture: a zoo model or explicit layer dictionaries."""

    name: Literal["mlp", "cnn1d", "myrtle"] = "cnn1d"
    depth: Annotated[int, Field(ge=1, le=64)] = 3
    width: Annotated[int, Field(ge=1, le=65_536)] = 32
    W_std: Annotated[float, Field(gt=0)] = 2**0.5
    b_std: Annotated[float, Field(ge=0)] | None = 0.1
    parameterization: Literal["ntk", "standard"] = "ntk"
    layers: list[dict[str, Any]] | None = None  # overrides name/depth/width when given
    factory: str | None = None  # "path/to/model.py:function" returning an nn.Module (user model)


class TrainConfig(Section):
    """Network training."""

    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: Annotated[float, Field(gt=0, le=100)] = 0.5
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    loss: Literal["mse", "cross-entropy"] = "mse"
    batch_size: Annotated[int, Field(ge=1)] = 128
    steps: Annotated[int, Field(ge=0)] | None = 1500  # total optimizer steps ...
    epochs: Annotated[float, Field(gt=0)] | None = None  # ... or epochs (then steps must be unset)
    min_steps: Annotated[int, Field(ge=0)] = 0  # with epochs: at least this many steps ...
    max_steps: Annotated[int, Field(ge=1)] | None = None  # ... and at most this many
    early_stopping: bool = False  # stop when the validation loss stops improving; keep the best
    evals: Annotated[int, Field(ge=2, le=10_000)] = 40  # validation evaluations over training
    patience: Annotated[float, Field(gt=0, le=1)] = 0.3  # fraction of training without a better val loss
    schedule: Literal["constant", "cosine", "step"] = "cosine"
    step_milestones: list[Annotated[float, Field(gt=0, lt=1)]] = [0.5, 0.75]  # fractions of training
    step_gamma: Annotated[float, Field(gt=0, le=1)] = 0.1
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    center_output: bool = True  # train f - f0 (f0 the network at init): the "centered" f0 convention
    precision: Literal["float32", "bf16-mixed"] = "float32"  # mixed precision only when asked

    @model_validator(mode="after")
    def _length(self) -> TrainConfig:
        if self.epochs is not None:
            self.steps = None
        return self

    def rule(self) -> str:
        """The training rule in words, for reports."""
        opt = f"{self.optimizer} lr {self.lr:g}" + (
            f" momentum {self.momentum:g}" if self.optimizer == "sgd" else ""
        )
        if self.epochs is not None:
            length = f"{self.epochs:g} epochs (at least {self.min_steps} steps" + (
                f", at most {self.max_steps})" if self.max_steps else ")"
            )
        else:
            length = f"{self.steps} steps"
        stop = (
            ", early stopping on the validation loss (best-validation weights kept)"
            if self.early_stopping
            else ""
        )
        center = "f − f0 (centered)" if self.center_output else "f (f0 added to the kernels)"
        return f"Networks trained as {center} with {opt}, {self.schedule} schedule, batch {self.batch_size}, {length}{stop}."

    def total_steps(self, n: int) -> int:
        """Planned optimizer steps for a training set of n samples.

        With ``epochs``: ⌈epochs · n / min(B, n)⌉ clipped to [``min_steps``, ``max_steps``], so
        that training grows with n and small sets still get enough updates; else ``steps``.
        Early stopping may end training before this.
        """
        if self.epochs is not None:
            steps = max(1, self.min_steps, math.ceil(self.epochs * n / min(self.batch_size, n)))
            return min(steps, self.max_steps) if self.max_steps is not None else steps
        return int(self.steps or 0)


class KernelConfig(Section):
    """eNTK computation and kernel ridge regression."""

    mode: Literal["trace", "full", "logit-sum", "single"] = "trace"
    output_index: Annotated[int, Field(ge=0)] | None = None
    memory_budget_mb: Annotated[int, Field(ge=16)] = 2048
    ridges: list[Ridge] = [0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]  # λ in λ·tr(K)/n
    ridge: Ridge | None = None  # fixed λ; None chooses from `ridges` on the validation split


class FitConfig(Section):
    """Power-law fits of test loss against n."""

    metric: Literal["test_mse", "test_error"] = "test_mse"
    offset: bool = False  # fit L = a n^-α + c instead of L = a n^-α
    bootstrap: Annotated[int, Field(ge=10, le=100_000)] = 1000
    ci: Annotated[float, Field(gt=0, lt=1)] = 0.95


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

    Defaults: ``widths`` (network, eNTK and regression across the n grid 64..1024) stop at 128,
    and the wider ``probe_widths`` add only the eNTK→NTK distance on the probe set (no
    training, no regression); 500 test points. The paper-scale sweep is
    ``widths = [16, 32, 64, 128, 256, 512]`` with the base data defaults (hours on CPU: a
    width-512 eNTK on 4096 + 1256 points alone is ~10^14 flops).
    """

    experiment: Literal["width-scaling"] = "width-scaling"
    widths: list[PositiveInt] = [16, 32, 64, 128]  # full data scaling (nn, entk) at each width
    probe_widths: list[PositiveInt] = [256, 512, 1024]  # extra widths: eNTK→NTK distance only
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
        if self.kernel.mode == "full":
            raise ValueError(
                "width-scaling regresses with one scalar kernel per width: kernel.mode must be "
                "trace, logit-sum or single, not full"
            )
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
        if self.kernel.mode == "full":
            raise ValueError(
                "pretrained-kernel regresses with one scalar kernel: kernel.mode must be trace, "
                "logit-sum or single, not full"
            )
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
        if self.kernel.mode == "full":
            raise ValueError(
                "kernel-evolution compares one scalar kernel per checkpoint: kernel.mode must be "
                "trace, logit-sum or single, not full"
            )
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


# ----------------------------------------------------------------------------- loading


def _allowed_keys(cls: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the section at ``loc`` (for 'did you mean')."""
    model: Any = cls
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def _describe(err: dict[str, Any], cls: type[BaseModel]) -> str:
    """One sentence for the first pydantic error: the key, the value, what is allowed."""
    loc = tuple(
        p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "constrained-")))
    )
    loc = tuple(p for p in loc if p not in ("int", "float", "list[...]", "str", "none", "dict[str,any]"))
    key = ".".join(str(p) for p in loc) or "config"
    kind = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(cls, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f" (did you mean {'.'.join(map(str, loc[:-1] + (close[0],)))}?)" if close else ""
        return f"unknown config key {key}{hint}; allowed keys here: {', '.join(allowed)}."
    msg = err["msg"].replace("Input should be", "must be").replace("Value error, ", "")
    if kind == "value_error":
        return f"{msg}."
    return f"config key {key} {msg[0].lower() + msg[1:] if msg.startswith('Input') else msg}; got {value!r}."


def _parse_value(text: str) -> Any:
    """A --set value: a TOML value when it parses as one, else a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides to a raw config dictionary (copied)."""
    out = json.loads(json.dumps(raw))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set takes dotted.key=value; got {item!r}.")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {part} is not a table.")
        node[parts[-1]] = _parse_value(text.strip())
    return out


def validate(raw: dict[str, Any]) -> AnyConfig:
    """Validate a raw dictionary into the config class its ``experiment`` names."""
    name = raw.get("experiment", "data-scaling")
    if name not in EXPERIMENTS:
        close = difflib.get_close_matches(str(name), list(EXPERIMENTS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"unknown experiment {name!r}{hint}; allowed: {', '.join(EXPERIMENTS)}.")
    cls = EXPERIMENTS[name]
    try:
        return cls.model_validate({**raw, "experiment": name})
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors()[0], cls)) from None


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file; a missing or malformed file is a one-sentence ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist.")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p} is not a text (UTF-8) TOML file.") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> AnyConfig:
    """The resolved config: the built-in defaults, then the file, then ``--set`` overrides."""
    raw = read_toml(path) if path is not None else {}
    return validate(apply_overrides(raw, overrides or []))


def to_toml(cfg: BaseModel) -> str:
    """The resolved config as TOML (None values are left out: they mean 'default/unset')."""
    return tomli_w.dumps(_drop_none(cfg.model_dump(mode="json")))


def _drop_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_drop_none(v) for v in obj]
    return obj
