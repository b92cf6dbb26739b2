"""Unit functions shared by the experiments: ``fn(ctx, **args) -> result`` (picklable).

Each returns plain Python/NumPy values so results can be cached and shipped between processes.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from ntklab.experiments.common import batch_seed, build_spec, eval_points, init_model
from ntklab.kernels import empirical_ntk
from ntklab.train import TrainResult, evaluate, train


def _budget(ctx: Any) -> int:
    return ctx.cfg.kernel.memory_budget_mb * 2**20


def kernel_blocks(ctx: Any, kernel_fn, n: int) -> dict[str, np.ndarray]:
    """K(train[:n], train[:n]) and K(val+test, train[:n]) as float64 arrays from ``kernel_fn(x1, x2)``."""
    s = ctx.splits
    xt = ctx.tensor(s.x_train[:n])
    xe = ctx.tensor(eval_points(s))
    return {
        "train": kernel_fn(xt, None).cpu().numpy(),
        "cross": kernel_fn(xe, xt).cpu().numpy(),
    }


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


def train_on(
    ctx: Any, n: int, seed_index: int, steps: int | None = None, width: int | None = None
) -> TrainResult:
    """The network of repetition ``seed_index`` trained on train[:n] for ``steps`` steps
    (default: the config's length), with that repetition's init and batch order."""
    s = ctx.splits
    return train(
        init_model(ctx, seed_index, width),
        ctx.tensor(s.x_train[:n]),
        ctx.tensor(s.y_train[:n]),
        ctx.tensor(s.labels_train[:n], torch.long),
        ctx.cfg.train,
        seed=batch_seed(ctx.cfg, seed_index, n),
        steps=steps,
        progress=ctx.progress,
    )


def train_network(
    ctx: Any, n: int, seed_index: int, width: int | None = None, steps: int | None = None
) -> dict[str, Any]:
    """Train the network of repetition ``seed_index`` on the first n samples; test metrics."""
    t0 = time.perf_counter()
    s = ctx.splits
    res = train_on(ctx, n, seed_index, steps, width)
    test = evaluate(
        res.model, ctx.tensor(s.x_test), ctx.tensor(s.y_test), ctx.tensor(s.labels_test, torch.long)
    )
    fit = evaluate(
        res.model,
        ctx.tensor(s.x_train[:n]),
        ctx.tensor(s.y_train[:n]),
        ctx.tensor(s.labels_train[:n], torch.long),
    )
    return {
        "test_mse": test["mse"],
        "test_error": test["error"],
        "train_mse": fit["mse"],
        "train_error": fit["error"],
        "steps": res.steps,
        "seconds": time.perf_counter() - t0,
    }


def entk_at_init(ctx: Any, n: int, seed_index: int, width: int | None = None) -> dict[str, np.ndarray]:
    """The eNTK at initialization of repetition ``seed_index`` on the first n training points."""
    model = init_model(ctx, seed_index, width).eval()  # BatchNorm uses its running statistics
    return kernel_blocks(ctx, entk_kernel_fn(ctx, model), n)


def infinite_block(
    ctx: Any, part: str, cols: list[int], rows: list[int] | None = None
) -> dict[str, np.ndarray]:
    """One block of the infinite-width NNGP and NTK of the config's architecture.

    ``part = "train"``: K(x_train[r0:r1], x_train[c0:c1]), (r1 − r0, c1 − c0), exactly
    symmetric when rows == cols; ``part = "cross"``: K(val+test, x_train[c0:c1]),
    (V + T, c1 − c0). Returns ``{"nngp": block, "ntk": block}`` (float64).
    """
    s = ctx.splits
    spec = build_spec(ctx.cfg.arch, s.num_outputs)
    xc = ctx.tensor(s.x_train[cols[0] : cols[1]], torch.float64)
    if part == "cross":
        x1, x2 = ctx.tensor(eval_points(s), torch.float64), xc
    elif rows is None or list(rows) == list(cols):
        x1, x2 = xc, None
    else:
        x1, x2 = ctx.tensor(s.x_train[rows[0] : rows[1]], torch.float64), xc
    k = spec.kernel_fn(x1, x2, get=("nngp", "ntk"), memory_budget_bytes=_budget(ctx), progress=ctx.progress)
    return {name: v.cpu().numpy() for name, v in k.items()}
