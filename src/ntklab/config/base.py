"""What every experiment's config shares: :class:`BaseExperiment` and :data:`SCALING_TRAIN`.

Each experiment's own config class subclasses :class:`BaseExperiment` in its experiment module
(:mod:`ntklab.experiments`); the top-level key ``experiment`` selects it through the registry
:data:`ntklab.experiments.REGISTRY` (:func:`ntklab.config.loading.validate`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from ntklab.config.sections import ArchConfig, DataConfig, FitConfig, KernelConfig, Section, TrainConfig


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

    @model_validator(mode="after")
    def _fit_range(self) -> BaseExperiment:
        grid = self.data.n_grid()
        if self.fit.n_min is not None and sum(n >= self.fit.n_min for n in grid) < 2:
            allowed = f"at most {grid[-2]}" if len(grid) > 1 else "none (leave it unset)"
            raise ValueError(
                f"fit.n_min = {self.fit.n_min} leaves fewer than 2 points of the n grid {grid}; allowed: {allowed}"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _section_defaults(cls, data: Any) -> Any:
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

    def digest(self) -> str:
        """A short hash of the resolved config."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def largest_n(self) -> int:
        """Largest training-set size any unit of this experiment uses (the data it loads)."""
        return self.data.n_max

    def require_scalar_kernel(self, why: str) -> None:
        """Refuse ``kernel.mode = "full"`` where the experiment regresses with a scalar kernel."""
        if self.kernel.mode == "full":
            raise ValueError(
                f"{self.experiment} {why}: kernel.mode must be trace, logit-sum or single, not full"
            )


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


#: Any experiment's config (the name type hints used before the registry; every config is one).
AnyConfig = BaseExperiment
