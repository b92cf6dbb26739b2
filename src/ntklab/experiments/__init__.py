"""Experiments: one module per experiment, the single home of what it knows, and the registry.

Each experiment module holds

* ``NAME`` (the config's ``experiment`` key) and ``TITLE`` (its report section);
* ``CONFIG``: its config class, a :class:`~ntklab.config.base.BaseExperiment` (defaults, checks,
  ``largest_n()``, the data it loads);
* ``plan(cfg) -> units``, ``analyze(cfg, results, ctx) -> (rows, summary)``,
  ``figures(cfg, rows, summary, out_dir) -> paths`` and ``findings(summary) -> verdicts``.

Config loading, the runner and the report loop over :data:`REGISTRY`, so a new experiment is
its own module and one entry below.
"""

from __future__ import annotations

from types import ModuleType

from ntklab.experiments import data_scaling, kernel_evolution, pretrained_kernel, width_scaling

#: Every experiment module by its ``NAME``, in the order they are listed and reported.
REGISTRY: dict[str, ModuleType] = {
    m.NAME: m for m in (data_scaling, width_scaling, pretrained_kernel, kernel_evolution)
}


def get(name: str) -> ModuleType:
    """The experiment module named ``name``."""
    return REGISTRY[name]
