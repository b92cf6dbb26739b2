"""Pieces every experiment shares: the spec from the config, seeds, kernel points, regression."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ntklab.arch import ZOO, Spec, from_layers
from ntklab.arch.factory import build_user_model
from ntklab.config.base import BaseExperiment
from ntklab.config.sections import ArchConfig, KernelConfig
from ntklab.data.prepare import Splits
from ntklab.errors import ArchError
from ntklab.regress import mse, zero_one
from ntklab.run.units import derive_seed


def build_spec(arch: ArchConfig, num_outputs: int) -> Spec:
    """The architecture ``arch`` with ``num_outputs`` outputs."""
    if arch.layers is not None:
        spec = from_layers(arch.layers)
        last = spec.layers[-1]
        if getattr(last, "width", None) != num_outputs:
            raise ArchError(
                f"the last layer of arch.layers has width {getattr(last, 'width', None)} "
                f"but the task has {num_outputs} outputs; set its width to {num_outputs}."
            )
        return spec
    return ZOO[arch.name](
        arch.depth,
        arch.width,
        out=num_outputs,
        W_std=arch.W_std,
        b_std=arch.b_std,
        parameterization=arch.parameterization,
    )


def arch_label(arch: ArchConfig, width: bool = False) -> str:
    """A figure title's name of the architecture: the user's factory function, "layers" for
    explicit layer dictionaries, else the zoo name (with ``width``: and its width)."""
    if arch.factory is not None:
        return arch.factory.rpartition(":")[2]
    if arch.layers is not None:
        return "layers"
    return f"{arch.name} (width {arch.width})" if width else arch.name


def factory_reads(arch: ArchConfig) -> dict[str, Any]:
    """``{"factory_sha256": …}`` for a user's model file (its contents, not only its name), else {}."""
    if arch.factory is None:
        return {}
    return {"factory_sha256": file_digest(arch.factory.rsplit(":", 1)[0])}


def arch_arg(arch: ArchConfig) -> dict[str, Any]:
    """The ``arch`` argument of a unit that builds ``arch`` (JSON, part of the unit's key)."""
    return arch.model_dump(mode="json")


def unit_reads(
    cfg: BaseExperiment, *, seed: bool = True, arch: bool = True, train: bool = False, kernel: bool = False
) -> dict[str, Any]:
    """The config values a unit reads from ``ctx.cfg``, the part of its key beside its arguments.

    Always the data; with ``seed`` the run's seed (initialization and batch order); with
    ``arch`` the architecture and the user's model file behind it (:func:`factory_reads`), else
    only that file, for a unit that receives its architecture as an argument (:func:`arch_arg`);
    with ``train`` the training config; with ``kernel`` the eNTK's mode.
    """
    reads: dict[str, Any] = {"seed": cfg.seed} if seed else {}
    reads["data"] = data_reads(cfg)
    if arch:
        reads["arch"] = arch_arg(cfg.arch) | factory_reads(cfg.arch)
    else:
        reads |= factory_reads(cfg.arch)
    if train:
        reads["train"] = cfg.train.model_dump(mode="json")
    if kernel:
        reads |= {"mode": cfg.kernel.mode, "output_index": cfg.kernel.output_index}
    return reads


def file_digest(path: str) -> str | None:
    """SHA-256 of a file's bytes (None when it does not exist)."""
    p = Path(path)
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None


def data_reads(cfg: BaseExperiment) -> dict[str, Any]:
    """The data fields a unit depends on.

    The grid bounds do not change any sample, except for the on-disk image datasets that are
    read only as far as the run needs: there the number of training samples read
    (:func:`ntklab.data.registry.training_read`) is added as ``pool``.
    """
    from ntklab.data.registry import training_read
    from ntklab.run.context import RunContext

    d = cfg.data.model_dump(mode="json")
    for k in ("n_min", "n_max", "grid_factor"):
        d.pop(k)
    if cfg.data.name == "npz" and cfg.data.path:  # a user's file: its contents, not only its name
        d["file_sha256"] = file_digest(cfg.data.path)
    pool = training_read(cfg.data, RunContext(cfg).n_max)
    if pool is not None:
        d["pool"] = pool
    return d


def init_seed(cfg: BaseExperiment, seed_index: int) -> int:
    """Seed of the network's initialization for repetition ``seed_index``."""
    return derive_seed(cfg.seed, "init", seed_index)


def batch_seed(cfg: BaseExperiment, seed_index: int, n: int) -> int:
    """Seed of the mini-batch order for repetition ``seed_index`` at training-set size n."""
    return derive_seed(cfg.seed, "batches", seed_index, n)


def init_model(ctx: Any, seed_index: int, arch: ArchConfig | None = None) -> nn.Module:
    """The network ``arch`` (default: the run's ``arch``) at initialization for repetition
    ``seed_index``, on the run's device.

    Built from the spec, or by the user's ``arch.factory`` (seeded with the same init seed).
    """
    s, seed = ctx.splits, init_seed(ctx.cfg, seed_index)
    arch = ctx.cfg.arch if arch is None else arch
    if arch.factory is not None:
        model = build_user_model(arch.factory, seed, s.input_shape, s.num_outputs)
    else:
        model = build_spec(arch, s.num_outputs).module(s.input_shape, seed=seed)
    return model.to(ctx.device)


def eval_points(s: Splits) -> np.ndarray:
    """Validation then test inputs: the rows of every cross kernel."""
    return np.concatenate([s.x_val, s.x_test])


def regress_grid(
    k_train: np.ndarray,
    k_cross: np.ndarray,
    s: Splits,
    grid: list[int],
    kernel: KernelConfig,
    f0: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[dict[str, float]]:
    """Kernel regression for every n of ``grid`` by slicing one kernel.

    k_train (N, N) on the first N training points of ``s``; k_cross (V + T, N) validation then
    test rows. With ``f0 = (f0_train (N, K), f0_cross (V + T, K))`` the predictor is
    f0(x) + K(x, X)(K + λI)⁻¹(Y − f0(X)) (the linearized network's f0 added back), else
    K(x, X)(K + λI)⁻¹Y. The ridges, their search and the memory budget (which lets large n use
    the iterative solver) come from ``kernel`` (:meth:`KernelConfig.regressor`). Returns one
    dict per n: n, test_mse, test_error, ridge, jitter.
    """
    v = len(s.x_val)
    k = s.y_train.shape[1]
    f0_train, f0_cross = f0 if f0 is not None else (np.zeros((len(k_train), k)), np.zeros((len(k_cross), k)))
    out = []
    for n in grid:
        reg = kernel.regressor().fit(k_train[:n, :n], s.y_train[:n] - f0_train[:n])
        reg.select(k_cross[:v, :n], s.y_val - f0_cross[:v])
        pred = f0_cross[v:] + reg.predict(k_cross[v:, :n])
        out.append(
            {
                "n": n,
                "test_mse": mse(pred, s.y_test),
                "test_error": zero_one(pred, s.labels_test),
                "ridge": reg.ridge_,
                "jitter": reg.jitter_,
            }
        )
    return out
