"""Experiment ``data-scaling``: test loss vs n for the network and for kernel regression.

Every repetition i draws its own nested training subsets (the first n points of its own order
of the pool, :meth:`~ntklab.run.context.RunContext.seed_splits`). For every n of the grid and
every repetition: train the network on those n samples with the config's training rule
(method ``nn``); compute the eNTK at initialization once on the largest n plus the validation
and test points and slice it for every smaller n (``entk``); the infinite-width NTK and NNGP
of the same spec likewise on each repetition's points (``ntk``, ``nngp``). Fit
L(n) ≈ a·n^(−α) per method, and the paired difference of every kernel method's α to the
network's (:func:`ntklab.experiments.tidy.exponents`).

The predictor convention (summary ``f0``): ``"centered"`` (``train.center_output``, the
default) trains f − f0, so the network starts from the zero function like kernel regression
K(x, X)(K + λI)⁻¹Y; ``"added"`` trains f itself and the eNTK predicts
f0(x) + K(x, X)(K + λI)⁻¹(Y − f0(X)) with the same network's f0 (the infinite kernels use the
mean predictor, f0 = 0).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import model_validator

from ntklab.config.base import SCALING_TRAIN, BaseExperiment
from ntklab.config.sections import ArchConfig, TrainConfig
from ntklab.experiments.blocks import assemble, block_args, kernel_file, memmap_kernel
from ntklab.experiments.common import arch_arg, arch_label, regress_grid, unit_reads
from ntklab.experiments.tidy import row, rows_from, scaling_summary, seed_means, training_summary
from ntklab.experiments.units import NETWORK_METRICS
from ntklab.run.units import Unit

if TYPE_CHECKING:
    from ntklab.report.verdicts.comparisons import Verdict

NAME = "data-scaling"
TITLE = "Data scaling: network vs its kernels at initialization"
U = "ntklab.experiments.units"
METRICS = ("test_mse", "test_error", "ridge", "jitter")


class DataScalingConfig(BaseExperiment):
    """Test loss vs n for the network and kernel regression with its kernels.

    The network trains by :data:`SCALING_TRAIN`: on the default cnn1d (width 32) on MNIST-1D
    it reaches ≈ 3 % test error at n = 4096, where a fixed 1500 steps left it under-fitted
    (train MSE 0.24) and SGD at lr 0.5 stalls near 27 %. Adam moves every weight by about lr
    per step, so in the ntk parameterization a much wider network needs a smaller lr, or
    ``train.optimizer = "sgd"``.
    """

    experiment: Literal["data-scaling"] = "data-scaling"
    train: TrainConfig = SCALING_TRAIN

    @model_validator(mode="after")
    def _mode(self) -> DataScalingConfig:
        self.require_scalar_kernel("regresses every method's targets with one (n, n) kernel")
        return self


CONFIG = DataScalingConfig


def width_label(cfg: Any, arch: ArchConfig) -> str:
    """`` w=W`` in a unit's label when it builds another width than ``arch.width``, else ""."""
    return f" w={arch.width}" if arch.width != cfg.arch.width else ""


def train_unit(cfg: Any, arch: ArchConfig, n: int, seed_index: int, lr_from: Unit | None = None) -> Unit:
    """Train the network ``arch`` of repetition ``seed_index`` on n samples (with the learning
    rate chosen by unit ``lr_from`` when given)."""
    args = {"n": n, "seed_index": seed_index, "arch": arch_arg(arch)}
    if lr_from is not None:
        args["lr_from"] = lr_from.key
    return Unit(
        "train",
        f"{U}:train_network",
        args,
        unit_reads(cfg, arch=False, train=True),
        version=2,
        label=f"train n={n} seed={seed_index}{width_label(cfg, arch)}",
        after=(lr_from.key,) if lr_from is not None else (),
    )


def entk_unit(cfg: Any, arch: ArchConfig, n: int, seed_index: int) -> Unit:
    """eNTK at init of the network ``arch`` of repetition ``seed_index`` on the first n
    training points, as one unit."""
    return Unit(
        "entk",
        f"{U}:entk_at_init",
        {"n": n, "seed_index": seed_index, "arch": arch_arg(arch)},
        unit_reads(cfg, arch=False, kernel=True),
        version=2,
        label=f"eNTK n={n} seed={seed_index}{width_label(cfg, arch)}",
    )


def entk_units(cfg: Any, arch: ArchConfig, n: int, seed_index: int) -> list[Unit]:
    """The eNTK at init on the first n training points: :func:`entk_unit` when n is at most
    ``kernel.block``, else the network's outputs f0 there and the kernel's blocks of side
    ``kernel.block`` (:func:`~ntklab.experiments.blocks.block_args`), which
    :func:`entk_result` assembles."""
    if n <= cfg.kernel.block:
        return [entk_unit(cfg, arch, n, seed_index)]
    reads, tag = unit_reads(cfg, arch=False, kernel=True), f"seed={seed_index}{width_label(cfg, arch)}"
    base = {"seed_index": seed_index, "arch": arch_arg(arch)}
    f0 = Unit("entk", f"{U}:entk_outputs", {**base, "n": n}, reads, label=f"eNTK f0 n={n} {tag}")
    return [f0] + [
        Unit("entk", f"{U}:entk_block", {**base, **a, **storage(cfg, n)}, reads, label=f"eNTK {tag} {label}")
        for a, label in block_args(n, cfg.kernel.block)
    ]


def storage(cfg: Any, n: int) -> dict[str, str]:
    """``{"dtype": kernel.block_dtype}`` for the blocks of a kernel on n > ``kernel.block``
    points (assembled in a file on disk) unless that is float64, else {} (float64, in memory)."""
    dtype = cfg.kernel.block_dtype
    return {"dtype": dtype} if n > cfg.kernel.block and dtype != "float64" else {}


def entk_result(
    cfg: Any, ctx: Any, arch: ArchConfig, n: int, seed_index: int, results: dict[str, Any]
) -> dict[str, np.ndarray] | None:
    """The eNTK of :func:`entk_units` (``train``, ``cross``, ``f0_train``, ``f0_cross``); None
    while any of its units is missing. A blocked kernel's ``train`` is a read-only memory map
    in the store's ``kernels`` folder (in memory without a store)."""
    units = entk_units(cfg, arch, n, seed_index)
    if any(u.key not in results for u in units):
        return None
    if len(units) == 1:
        return results[units[0].key]
    kernel = large_kernel(ctx, [(u.args, u.key) for u in units[1:]], lambda key: results[key]["k"], n)
    return {**kernel, **results[units[0].key]}


def large_kernel(
    ctx: Any, blocks: list[tuple[dict[str, Any], str]], load: Any, n: int, name: str = ""
) -> dict[str, np.ndarray]:
    """A kernel of n training points from its ``blocks`` ((block arguments, unit key); ``load(key)``
    reads one): ``train`` memory-mapped in the store's ``kernels`` folder
    (:func:`~ntklab.experiments.blocks.memmap_kernel`, ``name``: which kernel of the blocks), or
    in memory without a store."""
    if ctx is None or ctx.store is None:
        return assemble([(a, load(k)) for a, k in blocks], n)
    return memmap_kernel(ctx.store.root / "kernels", blocks, load, n, name)


#: Training points per side of one block of the infinite kernels. The infinite NTK is the
#: longest computation of a sweep (minutes at n = 4096 on one core); in blocks it runs on every
#: worker, or every Ray node, side by side with the short units instead of alone at the end.
INFINITE_BLOCK = 1024


def infinite_units(cfg: Any, n: int, seed_index: int, cross: bool = True) -> list[Unit]:
    """Infinite NNGP and NTK on repetition ``seed_index``'s first n training points, as
    independent blocks of :data:`INFINITE_BLOCK` points
    (:func:`~ntklab.experiments.blocks.block_args`, with K(val+test, train[:n]) when
    ``cross``). :func:`infinite_result` assembles them.
    """
    reads = unit_reads(cfg, seed=False)  # the infinite kernels are deterministic
    if cfg.arch.parameterization == "ntk" and cfg.arch.layers is None:
        del reads["arch"]["width"]  # ntk-parameterized infinite kernels do not depend on the width
    return [
        Unit(
            "infinite",
            f"{U}:infinite_block",
            {**a, "seed_index": seed_index, **storage(cfg, n)},
            reads,
            version=2,
            label=f"NTK/NNGP s{seed_index} {label}",
        )
        for a, label in block_args(n, INFINITE_BLOCK, cross)
    ]


def infinite_result(
    cfg: Any,
    n: int,
    seed_index: int,
    results: Mapping[str, Any],
    cross: bool = True,
    ctx: Any = None,
    names: Sequence[str] = ("nngp", "ntk"),
) -> dict[str, dict[str, np.ndarray]] | None:
    """``{name: {"train": (n, n), "cross": (V+T, n)} for name in names}`` (``"nngp"``, ``"ntk"``)
    from the blocks of :func:`infinite_units` ("cross" only with ``cross``); None while any
    block is missing.
    Above ``kernel.block`` points (and with ``ctx``'s store) ``train`` is memory-mapped as the
    eNTK's is (:func:`large_kernel`), its blocks read one at a time."""
    units = infinite_units(cfg, n, seed_index, cross)
    if not units or any(u.key not in results for u in units):
        return None
    blocks = [(u.args, u.key) for u in units]
    if n <= cfg.kernel.block:
        parts = [(a, results[k]) for a, k in blocks]
        return {name: assemble([(a, r[name]) for a, r in parts], n) for name in names}
    return {
        name: large_kernel(ctx, blocks, lambda key, name=name: results[key][name], n, name) for name in names
    }


def kernel_files(cfg: Any, folder: Path) -> list[tuple[Path, int]]:
    """(path, bytes) of every kernel file the analysis assembles in ``folder`` (the store's
    ``kernels``, :func:`large_kernel`): per repetition the eNTK's and each infinite kernel's
    K(train, train), when ``data.n_max`` exceeds ``kernel.block``; for the disk check."""
    n = cfg.data.n_max
    if n <= cfg.kernel.block:
        return []
    size = n * n * np.dtype(cfg.kernel.block_dtype).itemsize
    files = []
    for i in range(cfg.seeds):
        keys = [u.key for u in infinite_units(cfg, n, i)]
        files += [kernel_file(folder, keys, name) for name in ("nngp", "ntk") if name in cfg.methods]
        if "entk" in cfg.methods:
            files.append(kernel_file(folder, [u.key for u in entk_units(cfg, cfg.arch, n, i)[1:]]))
    return [(f, size) for f in files]


def plan(cfg: Any) -> list[Unit]:
    """Every unit of the experiment: the infinite-kernel blocks, then per seed the eNTK at
    init and the networks (also the base of pretrained-kernel's plan)."""
    grid, n_max = cfg.data.n_grid(), cfg.data.n_max
    units: list[Unit] = []
    for i in range(cfg.seeds):
        if {"ntk", "nngp"} & set(cfg.methods):
            units += infinite_units(cfg, n_max, i)
        if "entk" in cfg.methods:
            units += entk_units(cfg, cfg.arch, n_max, i)
        if "nn" in cfg.methods:
            units += [train_unit(cfg, cfg.arch, n, i) for n in grid]
    return units


def f0_convention(cfg: Any) -> str:
    """``"centered"`` when the network is trained as f − f0 (``train.center_output``), else
    ``"added"`` (kernel regression adds the network's f0 back)."""
    return "centered" if cfg.train.center_output else "added"


def kernel_rows(
    cfg: Any,
    ctx: Any,
    method: str,
    kernel: dict,
    seed: int,
    width: int,
    grid: list[int],
    source: Sequence[str] = (),
) -> list[dict]:
    """Regression rows of one kernel of repetition ``seed`` across the grid; under the
    ``"added"`` convention a kernel that carries the network's outputs (``f0_train``,
    ``f0_cross``) predicts f0 + K(Y − f0).

    ``source``: the unit keys the kernel was assembled from. With them (and a store) every n's
    regression is kept in the store's ``regressions`` section (:func:`regression_key`), so an
    analysis interrupted after hours of large regressions resumes from the ones it had
    finished."""
    f0 = None
    if f0_convention(cfg) == "added" and "f0_train" in kernel:
        f0 = (kernel["f0_train"], kernel["f0_cross"])
    store = None if ctx is None or ctx.store is None or not source else ctx.store.section("regressions")
    recs = []
    for n in grid:
        key = regression_key(cfg, method, seed, n, source) if store is not None else None
        if key is not None and store.has(key):
            recs.append(store.load(key))
            continue
        (rec,) = regress_grid(kernel["train"], kernel["cross"], ctx.seed_splits(seed), [n], cfg.kernel, f0)
        if key is not None:
            store.save(key, rec)
        recs.append(rec)
    return [r for rec in recs for r in rows_from(cfg.experiment, method, width, seed, rec, METRICS)]


def regression_key(cfg: Any, method: str, seed: int, n: int, source: Sequence[str]) -> str:
    """Store key of one regression: the kernel's units, the targets (data, run seed, repetition,
    n), the f0 convention and every setting of the solve."""
    what = {
        "regression": 1,
        "units": sorted(source),
        "method": method,
        "data": cfg.data.model_dump(mode="json"),
        "seed": cfg.seed,
        "seed_index": seed,
        "n": n,
        "f0": f0_convention(cfg),
        "kernel": cfg.kernel.model_dump(mode="json"),
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


NN_METRICS = (*NETWORK_METRICS, "train_loss", "best_step", "still_falling")


def nn_rows(cfg: Any, method: str, result: dict, n: int, seed: int, width: int) -> list[dict]:
    """Rows of one trained network: its test and train metrics, final training loss, the step
    of the kept weights and whether its training loss was still falling (row step = steps
    taken)."""
    return [
        row(cfg.experiment, method, n, width, seed, result["steps"], m, result[m])
        for m in NN_METRICS
        if m in result
    ]


def base_rows(cfg: Any, results: dict[str, Any], ctx: Any) -> list[dict]:
    """Tidy rows of the units of :func:`plan`: the infinite kernels, the eNTK at init and the
    networks, as asked by ``cfg.methods`` (missing units are skipped)."""
    grid, n_max, w = cfg.data.n_grid(), cfg.data.n_max, cfg.arch.width
    rows: list[dict] = []
    for i in range(cfg.seeds):
        wanted = [m for m in ("ntk", "nngp") if m in cfg.methods]
        inf = infinite_result(cfg, n_max, i, results, ctx=ctx, names=wanted) if wanted else None
        keys = [u.key for u in infinite_units(cfg, n_max, i)]
        for m in wanted if inf is not None else []:
            rows += kernel_rows(cfg, ctx, m, inf[m], i, 0, grid, keys)
        k = entk_result(cfg, ctx, cfg.arch, n_max, i, results) if "entk" in cfg.methods else None
        if k is not None:
            keys = [u.key for u in entk_units(cfg, cfg.arch, n_max, i)]
            rows += kernel_rows(cfg, ctx, "entk", k, i, w, grid, keys)
        for n in grid:
            r = results.get(train_unit(cfg, cfg.arch, n, i).key)
            if r is not None and "nn" in cfg.methods:
                rows += nn_rows(cfg, "nn", r, n, i, w)
    return rows


def analyze(cfg: DataScalingConfig, results: dict[str, Any], ctx: Any) -> tuple[list[dict], dict[str, Any]]:
    """Tidy rows and the summary's ``exponents`` from unit results (missing units are skipped)."""
    rows = base_rows(cfg, results, ctx)
    return rows, {**scaling_summary(rows, cfg.fit, cfg.seed), **common_summary(cfg, rows)}


def common_summary(cfg: Any, rows: list[dict]) -> dict[str, Any]:
    """Summary keys every scaling experiment shares: the grid, the f0 convention, the mean test
    loss of every method at the largest n and how the networks trained."""
    return {
        "n_grid": cfg.data.n_grid(),
        "f0": f0_convention(cfg),
        "test_loss_at_n_max": seed_means(rows, "method", metric=cfg.fit.metric, n=cfg.data.n_max),
        "training": training_summary(rows, cfg.train.rule(), cfg.train.early_stopping and cfg.data.n_val > 0),
    }


def figures(cfg: DataScalingConfig, rows: list[dict], summary: dict, out_dir) -> list:
    """The log-log scaling figure."""
    from ntklab.report.figures import scaling_figure

    return [
        scaling_figure(
            rows,
            summary["exponents"],
            cfg.fit.metric,
            out_dir / "scaling.png",
            title=f"{cfg.data.name}: {arch_label(cfg.arch)}",
        )
    ]


def findings(summary: dict[str, Any]) -> list[Verdict]:
    """The verdicts of a ``data-scaling`` summary (:mod:`ntklab.report.verdicts.data_scaling`)."""
    from ntklab.report.verdicts.data_scaling import data_scaling

    return data_scaling(summary)
