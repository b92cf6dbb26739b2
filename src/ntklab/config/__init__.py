"""Typed experiment configs (pydantic), loaded from TOML, with one-sentence errors.

Every field has a default and a range. The top-level key ``experiment`` selects the config class
(and so the defaults): ``data-scaling`` (default), ``width-scaling``, ``pretrained-kernel``,
``kernel-evolution``. ``--set dotted.key=value`` overrides are applied to the raw dictionary
before validation, so they are checked exactly like the file.

* :mod:`ntklab.config.sections`: the tables every experiment shares (data, arch, train, kernel, fit);
* :mod:`ntklab.config.experiments`: one config class per experiment;
* :mod:`ntklab.config.loading`: reading TOML, applying overrides, validating, writing TOML.

Users import the public names from ``ntklab.config``.
"""

from ntklab.config.experiments import (
    EXPERIMENTS,
    SCALING_TRAIN,
    AnyConfig,
    BaseExperiment,
    DataScalingConfig,
    EvolutionConfig,
    KernelEvolutionConfig,
    PretrainedConfig,
    PretrainedKernelConfig,
    WidthScalingConfig,
)
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
