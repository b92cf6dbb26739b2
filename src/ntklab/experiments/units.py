"""Unit functions shared by the experiments: ``fn(ctx, **args) -> result`` (picklable).

Each returns plain Python/NumPy values so results can be cached and shipped between processes.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from ntklab.config.sections import ArchConfig
from ntklab.experiments.common import batch_seed, build_spec, eval_points, init_model
from ntklab.kernels import empirical_ntk
from ntklab.train import TrainResult, evaluate, train

#: What :func:`network_metrics` measures of a network: test and training-set MSE and 0-1 error.
NETWORK_METRICS = ("test_mse", "test_error", "train_mse", "train_error")


def _budget(ctx: Any) -> int:
    return ctx.cfg.kernel.memory_budget_mb * 2**20


def arch_of(ctx: Any, arch: dict[str, Any] | None) -> ArchConfig:
    """The architecture a unit received as ``arch``
    (:func:`~ntklab.experiments.common.arch_arg`); None: the run's."""
    return ctx.cfg.arch if arch is None else ArchConfig.model_validate(arch)


def kernel_blocks(ctx: Any, kernel_fn, n: int, seed_index: int) -> dict[str, np.ndarray]:
    """K(train[:n], train[:n]) and K(val+test, train[:n]) of repetition ``seed_index``'s training
    order, as float64 arrays from ``kernel_fn(x1, x2)``."""
    s = ctx.seed_splits(seed_index)
    xt = ctx.tensor(s.x_train[:n])
    xe = ctx.tensor(eval_points(s))
    return {
        "train": kernel_fn(xt, None).cpu().numpy(),
        "cross": kernel_fn(xe, xt).cpu().numpy(),
    }


@torch.no_grad()
def outputs_at(ctx: Any, model: torch.nn.Module, n: int, seed_index: int) -> dict[str, np.ndarray]:
    """f(train[:n]) (n, K) and f(val+test) (V + T, K) of ``model`` in float64: the f0 blocks
    that kernel regression adds back under the ``"added"`` f0 convention."""
    s = ctx.seed_splits(seed_index)
    model.eval()

    def out(x: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [model(ctx.tensor(x[i : i + 4096])).double().cpu().numpy() for i in range(0, len(x), 4096)]
        )

    return {"f0_train": out(s.x_train[:n]), "f0_cross": out(eval_points(s))}


def entk_kernel_fn(ctx: Any, model: torch.nn.Module):
    """``(x1, x2) -> eNTK`` with the run's mode and memory budget."""
    k = ctx.cfg.kernel

    def fn(x1: torch.Tensor, x2: torch.Tensor | None) -> torch.Tensor:
        return empirical_ntk(
            model,
            x1,
            x2,
            mode=k.mode,
            output_index=k.output_index,
            memory_budget_bytes=_budget(ctx),
            progress=ctx.progress,
        )

    return fn


def training_rows(n: int, from_end: bool = False) -> slice:
    """The n training rows of a repetition's pool order: the first n (nested subsets), or
    with ``from_end`` the last n (disjoint from every nested subset smaller than pool − n)."""
    return slice(-n, None) if from_end else slice(0, n)


def train_on(
    ctx: Any,
    arch: ArchConfig,
    n: int,
    seed_index: int,
    steps: int | None = None,
    from_end: bool = False,
    lr: float | None = None,
) -> TrainResult:
    """The network ``arch`` of repetition ``seed_index`` trained on its n training rows
    (:func:`training_rows`) for ``steps`` steps (default: the config's rule), with that
    repetition's init, data subset and batch order. The validation split drives early
    stopping when ``train.early_stopping`` is set; ``lr`` replaces ``train.lr``."""
    s, rows = ctx.seed_splits(seed_index), training_rows(n, from_end)
    cfg = ctx.cfg.train if lr is None else ctx.cfg.train.model_copy(update={"lr": lr})
    return train(
        init_model(ctx, seed_index, arch),
        ctx.tensor(s.x_train[rows]),
        ctx.tensor(s.y_train[rows]),
        ctx.tensor(s.labels_train[rows], torch.long),
        cfg,
        seed=batch_seed(ctx.cfg, seed_index, n),
        steps=steps,
        val=(ctx.tensor(s.x_val), ctx.tensor(s.y_val), ctx.tensor(s.labels_val, torch.long))
        if len(s.x_val)
        else None,
        progress=ctx.progress,
    )


def train_record(res: TrainResult) -> dict[str, Any]:
    """How a network was trained: steps taken and planned, the step of the kept weights, the
    final mini-batch training loss, and whether that loss was still falling at the end."""
    return {
        "steps": res.steps,
        "planned_steps": res.planned_steps,
        "best_step": res.best_step,
        "train_loss": res.final_train_loss,
        "still_falling": float(res.still_falling),
    }


def network_metrics(
    ctx: Any, model: torch.nn.Module, n: int, seed_index: int, from_end: bool = False
) -> dict[str, float]:
    """:data:`NETWORK_METRICS` of ``model``: test MSE and 0-1 error, and the same on the n
    training rows of repetition ``seed_index`` (:func:`training_rows`). Leaves ``model`` in
    eval mode."""
    s, rows = ctx.seed_splits(seed_index), training_rows(n, from_end)
    test = evaluate(model, ctx.tensor(s.x_test), ctx.tensor(s.y_test), ctx.tensor(s.labels_test, torch.long))
    fit = evaluate(
        model,
        ctx.tensor(s.x_train[rows]),
        ctx.tensor(s.y_train[rows]),
        ctx.tensor(s.labels_train[rows], torch.long),
    )
    return dict(zip(NETWORK_METRICS, (test["mse"], test["error"], fit["mse"], fit["error"])))


def train_network(
    ctx: Any, n: int, seed_index: int, arch: dict[str, Any] | None = None, lr_from: str | None = None
) -> dict[str, Any]:
    """Train the network ``arch`` (:func:`arch_of`) of repetition ``seed_index`` on its first n
    samples; test metrics of the kept (best-validation with early stopping) weights and how
    training went. With ``lr_from`` (the key of a unit that chose the learning rate on
    validation) its ``lr`` replaces ``train.lr``."""
    t0 = time.perf_counter()
    lr = stored(ctx, lr_from)["lr"] if lr_from else None
    res = train_on(ctx, arch_of(ctx, arch), n, seed_index, lr=lr)
    return {
        **network_metrics(ctx, res.model, n, seed_index),
        **train_record(res),
        **({"lr": lr} if lr is not None else {}),
        "seconds": time.perf_counter() - t0,
    }


def stored(ctx: Any, key: str) -> Any:
    """The stored result of unit ``key``, which the calling unit names in its ``after``
    (from ``ctx.store``, else the default store)."""
    from ntklab.run.store import default_store

    store = ctx.store or default_store()
    if not store.has(key):
        raise RuntimeError(f"unit {key} is not in the store {store.root}; it must finish first")
    return store.load(key)


def entk_at_init(
    ctx: Any, n: int, seed_index: int, arch: dict[str, Any] | None = None
) -> dict[str, np.ndarray]:
    """The eNTK at initialization of the network ``arch`` (:func:`arch_of`) of repetition
    ``seed_index`` on its first n training points, with the network's outputs there
    (``f0_train``, ``f0_cross``)."""
    model = init_model(ctx, seed_index, arch_of(ctx, arch)).eval()  # BatchNorm uses its running statistics
    return {
        **kernel_blocks(ctx, entk_kernel_fn(ctx, model), n, seed_index),
        **outputs_at(ctx, model, n, seed_index),
    }


def block_points(
    ctx: Any, seed_index: int, part: str, cols: list[int], rows: list[int] | None, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(x1, x2) of one kernel block of :func:`~ntklab.experiments.blocks.block_args` on
    repetition ``seed_index``'s training order: ``part = "train"``: (x_train[r0:r1],
    x_train[c0:c1]), x2 = None when rows == cols (the exactly symmetric diagonal block);
    ``part = "cross"``: (val+test, x_train[c0:c1])."""
    s = ctx.seed_splits(seed_index)
    xc = ctx.tensor(s.x_train[cols[0] : cols[1]], dtype)
    if part == "cross":
        return ctx.tensor(eval_points(s), dtype), xc
    if rows is None or list(rows) == list(cols):
        return xc, None
    return ctx.tensor(s.x_train[rows[0] : rows[1]], dtype), xc


def entk_block(
    ctx: Any,
    part: str,
    cols: list[int],
    rows: list[int] | None = None,
    seed_index: int = 0,
    arch: dict[str, Any] | None = None,
    dtype: str = "float64",
) -> dict[str, np.ndarray]:
    """``{"k": block}``: one block (:func:`block_points`) of the eNTK at initialization of the
    network ``arch`` (:func:`arch_of`) of repetition ``seed_index``, (r1 − r0, c1 − c0) or
    (V + T, c1 − c0) (× C × C in ``full`` mode), stored as ``dtype`` (``kernel.block_dtype``)."""
    model = init_model(ctx, seed_index, arch_of(ctx, arch)).eval()  # BatchNorm uses its running statistics
    x1, x2 = block_points(ctx, seed_index, part, cols, rows, torch.float32)
    return {"k": entk_kernel_fn(ctx, model)(x1, x2).cpu().numpy().astype(dtype, copy=False)}


def entk_outputs(
    ctx: Any, n: int, seed_index: int, arch: dict[str, Any] | None = None
) -> dict[str, np.ndarray]:
    """The outputs ``f0_train``, ``f0_cross`` (:func:`outputs_at`) of the network ``arch`` at
    initialization, beside the blocks of its eNTK (:func:`entk_block`)."""
    return outputs_at(ctx, init_model(ctx, seed_index, arch_of(ctx, arch)), n, seed_index)


def infinite_block(
    ctx: Any,
    part: str,
    cols: list[int],
    rows: list[int] | None = None,
    seed_index: int = 0,
    dtype: str = "float64",
) -> dict[str, np.ndarray]:
    """One block (:func:`block_points`) of the infinite-width NNGP and NTK of the config's
    architecture, on the training order of repetition ``seed_index`` (each repetition has its
    own data subset): (r1 − r0, c1 − c0), exactly symmetric when rows == cols, or
    (V + T, c1 − c0). Returns ``{"nngp": block, "ntk": block}``, computed in float64 and stored
    as ``dtype`` (``kernel.block_dtype`` for a kernel of more than ``kernel.block`` points).
    """
    s = ctx.seed_splits(seed_index)
    spec = build_spec(ctx.cfg.arch, s.num_outputs)
    x1, x2 = block_points(ctx, seed_index, part, cols, rows, torch.float64)
    k = spec.kernel_fn(x1, x2, get=("nngp", "ntk"), memory_budget_bytes=_budget(ctx), progress=ctx.progress)
    return {name: v.cpu().numpy().astype(dtype, copy=False) for name, v in k.items()}
