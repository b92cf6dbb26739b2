"""Experiments: each module has ``NAME``, ``plan(cfg) -> units``, ``analyze(cfg, results, ctx)``
and ``figures(cfg, rows, summary, out_dir)``."""

from __future__ import annotations

import importlib
from types import ModuleType

MODULES = {
    "data-scaling": "ntklab.experiments.data_scaling",
    "width-scaling": "ntklab.experiments.width_scaling",
    "pretrained-kernel": "ntklab.experiments.pretrained_kernel",
    "kernel-evolution": "ntklab.experiments.kernel_evolution",
}


def get(name: str) -> ModuleType:
    """The experiment module named ``name``."""
    return importlib.import_module(MODULES[name])
