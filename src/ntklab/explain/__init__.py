"""``ntklab explain``: does the NTK explain *my* network? One call on the user's model and data.

Given a model (a factory returning a fresh ``nn.Module``, or an architecture from ntklab's spec)
and data (an ``.npz``, a registered dataset, or a dict of arrays), :func:`explain`

1. loads the data and checks the model on it (one-sentence errors, before any work);
2. **probes** this machine with the units' thread count (:func:`~ntklab.explain.probe.run_probe`): a learning-rate
   range test of a few training steps (unless ``train.lr`` is given), the time of a training
   step alone and with one per worker side by side (the parallel speed-up available now), the
   eNTK of a small batch (features per sample, contraction per entry, from the engine's own
   timings), one kernel regression, one power-law fit, one figure and the data loading;
3. **plans** the largest experiments that fit ``SAFETY`` of the budget (default 10 minutes):
   the n grid, seeds, the training rule, validation/test points, the after-kernel's n₀ and
   the evolution run's size and checkpoints (:func:`~ntklab.explain.plan.choose_plan`). The networks train by a
   stated rule, epochs with a floor of steps and early stopping on the validation split
   (``TRAIN_RULES``, the first the data-scaling default); the plan shrinks n, seeds and test
   points before it shortens training, and trains below a useful length (``SHORT_RULES``) only
   as a last resort, which the report says. Every unit of every candidate plan is costed by
   :class:`~ntklab.explain.costs.CostModel` (training ∝ steps, eNTK ∝ features + entries with the engine's tiling,
   regression ∝ n³) and the units are list-scheduled on the workers; units shared between
   experiments or already stored cost nothing; analysis, figures and data loading are added;
4. **runs** ``data-scaling`` (network vs eNTK at init, and the infinite NTK for spec models),
   ``pretrained-kernel`` (the after-kernel at one n₀) and ``kernel-evolution`` (kernel
   distance and velocity during training), each with :func:`~ntklab.run.runner.run_experiment`
   into a sub-folder of the output folder, on a pool of single-threaded worker processes
   (:class:`~ntklab.run.local.LocalExecutor`, guarded by
   :class:`~ntklab.explain.budget.BudgetGuard`) under one progress bar. It measures its own elapsed time: measured
   unit times recalibrate the cost model, a later repetition (seed) of an experiment starts
   only if all of it fits the experiment's share of the time, no unit starts that would end
   past the budget, and before each experiment the rest of the plan is re-planned
   (:func:`~ntklab.explain.plan.replan`): shrunk or dropped when running late, grown when ahead of time (early
   stopping ends most training before its planned steps; the calibration measures how much);
5. writes ``report.html`` (self-contained) and ``report.md`` with the exponent tables, a
   plain-language verdict per finding (:mod:`ntklab.report`), the training rule, and whether
   the network at the largest n is at least as good as kernel regression with its eNTK at
   init, or why not (:func:`~ntklab.explain.network_check.network_check`).

Every unit result goes to the shared content-addressed store, and the plan is kept in
``explain.json``: running the same command again resumes (finished units are reused, units
skipped for time are computed).

Example
-------
``ntklab explain --model examples/resnet_model.py:make_model --data cifar10 --data-path
/path/to/cifar-10-batches-py --budget-minutes 10 --out runs/explain-resnet`` (or ``--budget 600``,
in seconds), or in Python::

    import ntklab
    result = ntklab.explain(make_model, "data.npz", budget_minutes=5, out="runs/mine")
    print(result["report_html"])
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ntklab.config.loading import validate
from ntklab.errors import NtkLabError
from ntklab.explain.budget import MIN_FACTOR, STOP_PRIOR, BudgetGuard, Calibration, Clock
from ntklab.explain.costs import CostModel, Estimator, list_schedule
from ntklab.explain.inputs import (
    DEFAULT_BUDGET_MINUTES,
    MISSING,
    Inputs,
    callable_source,
    get_dotted,
    pickle_callable,
    resolve_inputs,
)
from ntklab.explain.network_check import best_steps, network_check
from ntklab.explain.plan import (
    N_USEFUL,
    PARTIAL,
    SHORT_RULES,
    TRAIN_RULES,
    choose_plan,
    head_levels,
    make_configs,
    replan,
    tail_levels,
)
from ntklab.explain.probe import Probe, limit_blas, load_data, pick_lr, run_probe
from ntklab.explain.running import run_plan
from ntklab.explain.state import load_state

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "DEFAULT_BUDGET_MINUTES",
    "MIN_FACTOR",
    "N_USEFUL",
    "PARTIAL",
    "SHORT_RULES",
    "STOP_PRIOR",
    "TRAIN_RULES",
    "BudgetGuard",
    "Calibration",
    "CostModel",
    "Estimator",
    "Inputs",
    "Probe",
    "best_steps",
    "callable_source",
    "choose_plan",
    "explain",
    "head_levels",
    "list_schedule",
    "load_data",
    "make_configs",
    "network_check",
    "pick_lr",
    "pickle_callable",
    "replan",
    "resolve_inputs",
    "tail_levels",
]


def explain(
    model: str | Callable[[], nn.Module] | None = None,
    data: str | Path | Mapping[str, Any] = "mnist1d",
    *,
    out: str | Path | None = None,
    budget_minutes: float = DEFAULT_BUDGET_MINUTES,
    data_path: str | Path | None = None,
    arch: str | None = None,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    n_max: int | None = None,
    workers: int | None = None,
    progress: bool | None = None,
    echo: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Does the NTK explain this network? Plan, run and report within ``budget_minutes``.

    Parameters
    ----------
    model : str, callable or None
        ``"path/to/file.py:function"`` or a callable returning a fresh ``nn.Module`` (called once
        per seed under a seeded RNG; it gets ``num_outputs`` and/or ``input_shape`` when it has
        parameters of those names). None: ntklab's spec (``arch`` or the ``config``'s arch),
        which adds the infinite-width NTK to the comparison.
    data : str, Path or dict
        An ``.npz`` with ``x_train``, ``y_train``, ``x_test``, ``y_test``; a dataset name of the
        registry (``mnist1d``, ``digits``, ``cifar10`` with ``data_path``, ...); or a dict of
        those four arrays (saved as an ``.npz`` in the output folder).
    out : str or Path, optional
        Output folder (default ``runs/explain-DIGEST``); one sub-folder per experiment.
    budget_minutes : float
        Wall-clock budget for everything (probe, training, kernels, regressions, figures, report).
    data_path, arch, config, overrides :
        Folder of an on-disk dataset; a zoo architecture name; a TOML config whose sections
        (training, kernel, fit...) apply to every experiment; ``dotted.key=value`` overrides.
        Settings given there (e.g. ``train.steps``, ``seeds``) are kept, the planner picks the rest.
    n_max : int, optional
        Largest training-set size the plan may use.
    workers : int, optional
        Worker processes for the units (default: the CPUs available; 1 runs them in process).
    progress : bool, optional
        One progress bar over the whole plan (default: only on a terminal).
    echo : callable or None
        Where the plan and the verdicts are printed (None: silent).

    Returns
    -------
    dict
        ``explain.json``'s content plus ``summaries`` {experiment: summary}, ``report_html``,
        ``report_md`` (paths) and ``out`` (the folder).

    Raises
    ------
    NtkLabError
        One sentence for each user mistake (model, data, config, output folder), before any work.
    """
    import torch

    from ntklab.run.local import default_workers

    say = echo or (lambda _s: None)
    clock = Clock(time.perf_counter(), float(budget_minutes) * 60.0)
    if workers is not None and workers < 1:
        raise NtkLabError(f"--workers must be at least 1; got {workers}.")
    inputs, out_dir, files = resolve_inputs(
        model,
        data,
        out=Path(out) if out is not None else None,
        budget_minutes=budget_minutes,
        data_path=data_path,
        arch=arch,
        config=config,
        overrides=overrides,
        n_max=n_max,
    )
    state = load_state(out_dir, inputs)
    for name, blob in files.items():  # the generated model loader / data file the probe reads
        if not (out_dir / name).is_file():
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / name).write_bytes(blob)
    base_cfg = validate({**inputs.base, "experiment": "data-scaling"})
    gpu = base_cfg.device == "cuda" or (base_cfg.device == "auto" and torch.cuda.is_available())
    n_workers = workers or (1 if gpu else default_workers(cap=None))
    lr_fixed = get_dotted(inputs.base, "train.lr") is not MISSING
    probe = run_probe(base_cfg, inputs.model_desc, lr_fixed=lr_fixed, workers=n_workers)
    restore_blas = limit_blas(probe.blas_threads)  # the analysis runs as the probe timed it
    try:
        return run_plan(
            inputs, out_dir, state, probe, base_cfg, clock, n_workers, workers, overrides, config,
            budget_minutes, progress, say,
        )  # fmt: skip
    finally:
        restore_blas()
