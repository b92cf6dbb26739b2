"""Unit functions of the ``kernel-evolution`` experiment: ``fn(ctx, **args) -> result`` (picklable).

Two kinds of unit, so that re-analysis and new metrics never retrain:

* :func:`train_with_checkpoints` trains the network of one repetition once on the first n
  training points of the repetition's own draw of the pool (``ctx.seed_splits``) and returns
  the ``state_dict`` (as NumPy arrays) at every checkpoint step, with the network's own test
  and train metrics there (computed in ``on_checkpoint``).
* :func:`kernels_at_checkpoint` rebuilds the network of one checkpoint from the stored
  ``state_dict`` and computes its eNTK K_t on the probe and regression points.

:func:`train_unit` and :func:`kernel_unit` plan them (their keys).

K_t is stored as three float64 blocks (N = max(regress_n, probe_train), V validation and T test
points, P_te = probe_test)::

    train       K_t(train[:N], train[:N])      (N, N)
    cross       K_t(val + test, train[:N])     (V + T, N)
    probe_test  K_t(test[:P_te], test[:P_te])   (P_te, P_te)

from which :func:`~ntklab.experiments.kernel_motion.probe_kernel` assembles the kernel on the
probe set (the first ``probe_train`` training points, then the first ``probe_test`` test points)
without computing any pair twice, and kernel regression with K_t uses
``train[:regress_n, :regress_n]`` and ``cross[:, :regress_n]``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn

from ntklab.errors import ConfigError
from ntklab.experiments import evolution_checkpoints as checkpoints
from ntklab.experiments.common import batch_seed, eval_points, init_model, unit_reads
from ntklab.experiments.evolution_config import KernelEvolutionConfig
from ntklab.experiments.units import entk_kernel_fn, network_metrics, stored
from ntklab.run.units import Unit
from ntklab.train import Centered, steps_to_epochs, train

U = "ntklab.experiments.evolution_units"
UNIT_VERSION = 2  # 2: each repetition trains on its own draw of the training pool


def train_unit(cfg: KernelEvolutionConfig, seed_index: int) -> Unit:
    """Train repetition ``seed_index`` on ``evolution.n`` points, keeping every checkpoint."""
    n = cfg.evolution.n
    args = {"seed_index": seed_index, "n": n, "checkpoint_steps": checkpoints.checkpoint_steps(cfg)}
    return Unit(
        "train",
        f"{U}:train_with_checkpoints",
        args,
        unit_reads(cfg, train=True),
        version=UNIT_VERSION,
        label=f"train n={n} seed={seed_index} ({len(args['checkpoint_steps'])} checkpoints)",
    )


def n_kernel_train(cfg: KernelEvolutionConfig) -> int:
    """N: training points the kernel blocks cover, max(regress_n, probe_train)."""
    return max(cfg.evolution.regress_n, cfg.evolution.probe_train)


def kernel_unit(cfg: KernelEvolutionConfig, seed_index: int, step: int) -> Unit:
    """eNTK blocks of repetition ``seed_index`` at checkpoint ``step``.

    It reads the training unit's stored checkpoint (``after``). Its key holds what determines the
    state at ``step`` — not the checkpoint list — and the points, so refining the checkpoints
    retrains but reuses the kernels already computed.
    """
    args = {
        "seed_index": seed_index,
        "step": step,
        "n_train": n_kernel_train(cfg),
        "probe_test": cfg.evolution.probe_test,
    }
    return Unit(
        "entk",
        f"{U}:kernels_at_checkpoint",
        args,
        {**unit_reads(cfg, train=True, kernel=True), "n": cfg.evolution.n},
        version=UNIT_VERSION,
        label=f"eNTK step={step} seed={seed_index}",
        after=(train_unit(cfg, seed_index).key,),
    )


def check_probe(ctx: Any) -> None:
    """Raise a one-sentence error when the probe set asks for more test points than there are."""
    pt, t = ctx.cfg.evolution.probe_test, len(ctx.splits.x_test)
    if pt > t:
        raise ConfigError(f"evolution.probe_test ({pt}) must be at most the {t} test points of the dataset.")


def train_with_checkpoints(ctx: Any, seed_index: int, n: int, checkpoint_steps: list[int]) -> dict[str, Any]:
    """Train repetition ``seed_index`` on its first n training points, keeping checkpoints.

    Returns
    -------
    dict with
        ``steps`` (list of int), ``epochs`` (list of float, epochs = step · min(B, n) / n),
        ``states`` {step: {name: ndarray}} (the ``state_dict`` before the update of that step;
        the last is the trained network), ``nn`` {step: {test_mse, test_error, train_mse,
        train_error}} (docs/design.md's MSE and 0-1 error of the network at that step, on the full test
        set and on its n training points), ``history`` (training-loss log), ``total_steps``,
        ``batch_size``, ``n``, ``seconds``.
    """
    check_probe(ctx)
    t0 = time.perf_counter()
    s, cfg = ctx.seed_splits(seed_index), ctx.cfg
    x, y = ctx.tensor(s.x_train[:n]), ctx.tensor(s.y_train[:n])
    labels = ctx.tensor(s.labels_train[:n], torch.long)
    metrics: dict[int, dict[str, float]] = {}

    def on_checkpoint(step: int, model: nn.Module) -> None:
        metrics[step] = network_metrics(ctx, model, n, seed_index)
        model.train()  # evaluation switches to eval mode; training goes on in train mode

    res = train(
        init_model(ctx, seed_index),
        x,
        y,
        labels,
        cfg.train,
        seed=batch_seed(cfg, seed_index, n),
        checkpoint_steps=checkpoint_steps,
        on_checkpoint=on_checkpoint,
        progress=ctx.progress,
    )
    steps = sorted(res.checkpoints)
    return {
        "n": n,
        "seed_index": seed_index,
        "total_steps": res.steps,
        "batch_size": cfg.train.batch_size,
        "steps": steps,
        "epochs": [steps_to_epochs(st, n, cfg.train.batch_size) for st in steps],
        "states": {
            st: {k: v.detach().cpu().numpy().copy() for k, v in res.checkpoints[st].items()} for st in steps
        },
        "nn": {st: metrics[st] for st in steps},
        "history": res.history,
        "seconds": time.perf_counter() - t0,
    }


def rebuild_model(ctx: Any, seed_index: int, state: dict[str, np.ndarray]) -> nn.Module:
    """The network of repetition ``seed_index`` with a stored ``state_dict`` loaded (eval mode).

    With ``train.center_output`` the network is wrapped in :class:`~ntklab.train.Centered` as
    during training (its frozen copy has no gradient, so the eNTK is the network's).
    """
    model = init_model(ctx, seed_index)
    if ctx.cfg.train.center_output:
        model = Centered(model)
    model.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
    return model.eval()


def checkpoint_kernels(
    ctx: Any, model: nn.Module, seed_index: int, n_train: int, probe_test: int
) -> dict[str, np.ndarray]:
    """The eNTK blocks ``train`` (N, N), ``cross`` (V + T, N), ``probe_test`` (P_te, P_te), float64.

    N = ``n_train`` first training points of repetition ``seed_index``; the cross rows are the validation then test points
    (:func:`~ntklab.experiments.common.eval_points`); ``probe_test`` is on the first
    ``probe_test`` test points. Uses the run's eNTK mode and memory budget.
    """
    s = ctx.seed_splits(seed_index)
    fn = entk_kernel_fn(ctx, model)
    xt = ctx.tensor(s.x_train[:n_train])
    return {
        "train": fn(xt, None).cpu().numpy(),
        "cross": fn(ctx.tensor(eval_points(s)), xt).cpu().numpy(),
        "probe_test": fn(ctx.tensor(s.x_test[:probe_test]), None).cpu().numpy(),
    }


def kernels_at_checkpoint(
    ctx: Any, seed_index: int, step: int, n_train: int, probe_test: int
) -> dict[str, Any]:
    """eNTK blocks (:func:`checkpoint_kernels`) of repetition ``seed_index`` at checkpoint ``step``.

    The checkpoint is read from the stored result of the experiment's training unit (the unit's
    ``after``; from ``ctx.store``, else the default store). The state at a step does not depend
    on which other steps are checkpointed, so this unit's key leaves the checkpoint list out and
    refining the checkpoints recomputes only the new kernels.
    """
    t0 = time.perf_counter()
    trained = stored(ctx, train_unit(ctx.cfg, seed_index).key)
    if step not in trained["states"]:
        raise RuntimeError(f"the training run of seed {seed_index} has no checkpoint at step {step}")
    model = rebuild_model(ctx, seed_index, trained["states"][step])
    blocks = checkpoint_kernels(ctx, model, seed_index, n_train, probe_test)
    return {"step": step, "blocks": blocks, "seconds": time.perf_counter() - t0}
