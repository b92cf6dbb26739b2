"""Typed experiment configs (pydantic), loaded from TOML, with one-sentence errors.

Every field has a default and a range. The top-level key ``experiment`` selects the config class
(and so the defaults) among the experiments of :data:`ntklab.experiments.REGISTRY`:
``data-scaling`` (default), ``width-scaling``, ``pretrained-kernel``, ``kernel-evolution``.
``--set dotted.key=value`` overrides are applied to the raw dictionary before validation, so they
are checked exactly like the file.

* :mod:`ntklab.config.sections`: the tables every experiment shares (data, arch, train, kernel, fit);
* :mod:`ntklab.config.base`: what every experiment's config shares (:class:`BaseExperiment`);
* :mod:`ntklab.config.loading`: reading TOML, applying overrides, validating, writing TOML;
* each experiment's own config class lives in its experiment module (``ntklab.experiments``).

Users import the public names from ``ntklab.config``; modules of ntklab import the submodules.
The experiment config classes and :data:`EXPERIMENTS` are looked up on first use, because the
experiment modules themselves import this package's submodules.
"""

from typing import Any

from ntklab.config.base import SCALING_TRAIN, AnyConfig, BaseExperiment
from ntklab.config.loading import apply_overrides, load_config, read_toml, to_toml, validate
from ntklab.config.sections import (
    DATASETS,
    ArchConfig,
    DataConfig,
    FitConfig,
    KernelConfig,
    Section,
    TrainConfig,
)


def __getattr__(name: str) -> Any:
    """``EXPERIMENTS`` ({name: config class}) and the experiment config classes, by name."""
    from ntklab.experiments import REGISTRY
    from ntklab.experiments.evolution_config import EvolutionConfig
    from ntklab.experiments.pretrained_kernel import PretrainedConfig

    public: dict[str, Any] = {m.CONFIG.__name__: m.CONFIG for m in REGISTRY.values()}
    public.update(
        EXPERIMENTS={key: m.CONFIG for key, m in REGISTRY.items()},
        EvolutionConfig=EvolutionConfig,
        PretrainedConfig=PretrainedConfig,
    )
    if name not in public:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return public[name]


__all__ = [
    "DATASETS",
    "EXPERIMENTS",
    "SCALING_TRAIN",
    "AnyConfig",
    "ArchConfig",
    "BaseExperiment",
    "DataConfig",
    "DataScalingConfig",
    "EvolutionConfig",
    "FitConfig",
    "KernelConfig",
    "KernelEvolutionConfig",
    "PretrainedConfig",
    "PretrainedKernelConfig",
    "Section",
    "TrainConfig",
    "WidthScalingConfig",
    "apply_overrides",
    "load_config",
    "read_toml",
    "to_toml",
    "validate",
]
