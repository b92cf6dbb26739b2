"""The config tables every experiment shares: data, architecture, training, kernel and fit.

A table rejects unknown keys and values out of range; its fields' defaults are the defaults of
every experiment unless the experiment's own config class overrides the table.
"""

from __future__ import annotations

import difflib
import math
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from ntklab.regress import KernelRegressor

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
    # how `ridges` are searched: "grid" solves all; "descending" from the largest down, stopping
    # once two in a row are worse than the best; "auto": descending for the iterative solver
    ridge_search: Literal["auto", "grid", "descending"] = "auto"
    block: Annotated[int, Field(ge=16)] = 8192  # eNTK of more points: blocks of this side
    # storage of the blocks of a kernel on more than `block` points (and its assembled file);
    # the regression accumulates in float64 either way
    block_dtype: Literal["float32", "float64"] = "float32"

    def regressor(self) -> KernelRegressor:
        """The kernel ridge regression these settings describe (:class:`~ntklab.regress.KernelRegressor`)."""
        from ntklab.regress import KernelRegressor

        ridges = self.ridges if self.ridge is None else [self.ridge]
        return KernelRegressor(ridges, memory_budget_mb=self.memory_budget_mb, search=self.ridge_search)


class FitConfig(Section):
    """Power-law fits of test loss against n."""

    metric: Literal["test_mse", "test_error"] = "test_mse"
    offset: bool = False  # fit L = a n^-α + c instead of L = a n^-α
    n_min: Annotated[int, Field(ge=1)] | None = None  # fit n >= this only (None: the whole grid)
    bootstrap: Annotated[int, Field(ge=10, le=100_000)] = 1000
    ci: Annotated[float, Field(gt=0, lt=1)] = 0.95
