"""The config of experiment ``kernel-evolution``: its checkpoints, probe set and training.

A module of its own because the experiment's helpers (:mod:`~ntklab.experiments.evolution_checkpoints`,
:mod:`~ntklab.experiments.evolution_units`) read it and :mod:`~ntklab.experiments.kernel_evolution`
imports them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from ntklab.config.base import BaseExperiment
from ntklab.config.sections import DataConfig, PositiveInt, Section, TrainConfig


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

    def largest_n(self) -> int:
        """The network trains on the first ``evolution.n`` points: the only training set."""
        return self.evolution.n

    @model_validator(mode="after")
    def _evolution(self) -> KernelEvolutionConfig:
        if getattr(self.train, "early_stopping", False):
            raise ValueError(
                "kernel-evolution trains to a fixed length so that its checkpoints are evenly spaced: "
                "set train.early_stopping = false"
            )
        self.require_scalar_kernel("compares one scalar kernel per checkpoint")
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
