"""Plain-language verdicts: pure functions from an experiment's ``summary.json`` to sentences.

Every sentence states the measured numbers it rests on, formatted by
:mod:`ntklab.report.formatting` (the report renders the same numbers with the same functions,
so a reader, or a test, finds in the text exactly the values of the summary rounded for display).

A kernel's exponent is compared with the network's through the paired bootstrap interval of
their difference Δα = α_nn − α_kernel (summary ``differences``, :mod:`ntklab.scaling`): an
interval above 0 means the network's law is steeper, below 0 the kernel's; an interval that
contains 0 means the two are *not distinguishable at this n range*, which is a statement about
the measurement, not evidence that they are equal (:mod:`ntklab.report.verdicts.comparisons`).

One module per experiment holds its verdicts; each experiment module's ``findings`` calls it,
and :func:`verdicts` dispatches on the summary's ``experiment`` through
:data:`ntklab.experiments.REGISTRY`. Findings (Vyas, Bansal & Nakkiran 2022, arXiv 2206.10012):

* ``data-scaling``: the network's α against the eNTK at init (and the infinite NTK/NNGP);
* ``width-scaling``: the same comparison for every width that has both;
* ``pretrained-kernel``: the after-kernel against the eNTK at init and against the network;
* ``kernel-evolution``: whether the eNTK barely moves, settles or keeps moving (angles between
  kernels, ``evolution.verdict``), α(t) of kernel regression with K_t, and kernel regression with
  the final eNTK against the network.

Example
-------
>>> s = {"experiment": "data-scaling", "n_grid": [32, 64],
...      "exponents": {"nn": {"alpha": 0.42, "ci_low": 0.37, "ci_high": 0.47},
...                    "entk": {"alpha": 0.21, "ci_low": 0.18, "ci_high": 0.24}}}
>>> print(verdicts(s)[0].text)  # doctest: +NORMALIZE_WHITESPACE
The network's exponent α = 0.420 [0.370, 0.470] is above the eNTK at init's α = 0.210 [0.180,
0.240] (95% CIs, n = 32–64): the eNTK at init does not explain the network's data scaling.
"""

from __future__ import annotations

from typing import Any

from ntklab.experiments import REGISTRY
from ntklab.report.verdicts.comparisons import Verdict, missing


def verdicts(summary: dict[str, Any]) -> list[Verdict]:
    """The verdicts of one experiment's summary (dispatch on ``summary["experiment"]``)."""
    experiment = REGISTRY.get(summary.get("experiment", ""))
    if experiment is None:
        return [missing(str(summary.get("experiment")), "this experiment has no verdict rules")]
    return experiment.findings(summary)
