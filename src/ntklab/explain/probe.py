"""The probe: what every kind of work costs on this machine, measured before planning.

:func:`run_probe` loads the data, checks the model on it (one-sentence errors before any
work) and times, with the units' thread count: a learning-rate range test, a training step
alone and side by side (the parallel speed-up available now), the eNTK of a small batch
(features per sample, contraction per entry, from the engine's own timings), one kernel
regression, one power-law fit, one figure and the data loading.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ntklab.config.base import AnyConfig
from ntklab.errors import ArchError, DataError, NtkLabError
from ntklab.explain.inputs import LADDER_MAX
from ntklab.kernels.empirical.mode import Mode

if TYPE_CHECKING:
    from torch import nn

    from ntklab.data.prepare import Splits

CONTENTION_STEPS = 4  # training steps timed alone and side by side (one per worker)
ENTK_PROBE_S = 0.2  # an eNTK probe quicker than this is timed again on 4x the samples
#: Inputs of the infinite-kernel probe: this many first, the second when that was quick.
INFINITE_PROBE_N = (32, 256)
REGRESS_PROBE_N = 512  # kernel regression is timed at this n and scaled as n³ (at least 1/8)
#: A quick model's step time is timed again on runs of about this many seconds (3 of them, at
#: most ``STEP_PROBE_MAX`` steps each): 12 steps of an MLP were timed 0.0008-0.0017 s/step.
STEP_PROBE_S = 0.15
STEP_PROBE_MAX = 400
LR_PROBE_STEPS = 12  # training steps of each learning-rate try (on one batch)
LR_TRIES = 4  # train.lr, then lowered by LR_DECREASE up to 3 times
LR_DECREASE = 0.25
LR_GROWTH = 2.0  # a try is unstable when a loss of its second half exceeds this times its first
LR_TOLERANCE = 1.25  # the largest rate whose loss is within this factor of the lowest wins


@dataclass(frozen=True)
class Probe:
    """Costs measured on this machine (seconds, with the units' torch thread count) and sizes.

    Attributes
    ----------
    load_s : loading and preparing the data once (every experiment and worker does it again;
        timed again when the first load generated or downloaded it)
    init_s : building the model once
    step_s : one training step at batch size ``batch``
    fwd_s : the forward pass of one sample in eval mode (evaluation)
    feature_s : eNTK features (per-sample Jacobians / Gram factors) of one sample
    pair_s : eNTK contraction per kernel entry
    entk_overhead_s : fixed cost of one eNTK call (planning the layers)
    feature_bytes : memory of one sample's features (decides the eNTK panels, see CostModel)
    regress_s : one kernel regression at n = ``REGRESS_PROBE_N`` with the ridge grid, with
        ``blas_threads`` BLAS threads (as the driver's analysis runs)
    fit_s : one power-law fit with its bootstrap
    figure_s : one figure
    infinite_pair_s : the infinite NTK + NNGP per kernel entry (spec models), else 0
    pool : training points available (validation included)
    n_test_max : test points available
    num_outputs, n_params, batch : the task's outputs, the model's trainable scalars, batch size
    lr, lr_stable : the learning rate the plan trains with, and whether the probe saw it stable
    contention : how much slower a training step runs with ``workers`` of them side by side
        (1: the cores are free; ``workers``: no parallel speed-up on this machine now)
    threads : torch threads the timings used (those of the units)
    seconds : how long the probe took
    """

    load_s: float
    init_s: float
    step_s: float
    fwd_s: float
    feature_s: float
    pair_s: float
    entk_overhead_s: float
    feature_bytes: int
    regress_s: float
    fit_s: float
    figure_s: float
    infinite_pair_s: float
    pool: int
    n_test_max: int
    num_outputs: int
    n_params: int
    batch: int
    lr: float = 0.0
    lr_stable: bool = True
    contention: float = 1.0
    threads: int = 1
    seconds: float = 0.0
    blas_threads: int = 0  # BLAS threads of the driver (regressions); 0: left as they were


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(result, seconds) of ``fn()``."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def build_model(cfg: AnyConfig, input_shape: tuple[int, ...], num_outputs: int, seed: int = 0) -> nn.Module:
    """The model of ``cfg`` (user factory or spec) at init, as the units build it."""
    from ntklab.arch.factory import build_user_model
    from ntklab.experiments.common import build_spec

    if cfg.arch.factory is not None:
        return build_user_model(cfg.arch.factory, seed, input_shape, num_outputs)
    return build_spec(cfg.arch, num_outputs).module(input_shape, seed=seed)


def check_model(cfg: AnyConfig, x: np.ndarray, num_outputs: int, what: str) -> nn.Module:
    """Build the model and check it maps (N, *input_shape) to (N, num_outputs); one-sentence errors."""
    import torch

    from ntklab.arch.factory import check_output
    from ntklab.experiments.common import build_spec

    shape = tuple(x.shape[1:])
    if cfg.arch.factory is None:
        got = build_spec(cfg.arch, num_outputs).out_shape(shape)
        if got != (num_outputs,):
            raise ArchError(
                f"the architecture maps inputs {shape} to {got}, but the task needs ({num_outputs},)."
            )
    model = build_model(cfg, shape, num_outputs)
    check_output(model, torch.as_tensor(x[:2]), num_outputs, what)
    return model


def load_data(cfg: AnyConfig) -> Splits:
    """The prepared splits with the whole training pool (no validation split carved out).

    Read by the dataset registry (:func:`ntklab.data.registry.load_raw`: its loader and checks)
    and prepared with the config's data settings, as the experiments'
    :func:`~ntklab.data.registry.load_splits` does (classes, standardization, ZCA,
    ``downsample``, ``channels``: the probe times the model on the inputs the units see),
    reading at most ``LADDER_MAX`` plus the validation split of on-disk datasets;
    ``load_splits`` itself would refuse a pool smaller than what it reads.
    """
    from ntklab.data.prepare import prepare
    from ntklab.data.registry import load_raw

    d = cfg.data
    shaping = d.model_dump(include={"seed", "classes", "standardize", "zca", "downsample", "channels"})
    return prepare(load_raw(d, LADDER_MAX), n_max=1, n_val=0, n_test=None, **shaping)


def limit_blas(n: int) -> Callable[[], None]:
    """Limit the BLAS threads of this process to ``n`` (0: leave them); returns the undo."""
    if n < 1:
        return lambda: None
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn depends on it
        return lambda: None
    limiter = threadpool_limits(limits=n, user_api="blas")
    return limiter.restore_original_limits


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (restored afterwards)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def unit_threads(cfg: AnyConfig) -> int:
    """Torch threads the units of ``cfg`` run with (their ``num_cpus``; see run.executors)."""
    import torch

    from ntklab import experiments

    units = experiments.get(cfg.experiment).plan(cfg)
    return max((getattr(u, "threads", 0) or 0 for u in units), default=0) or torch.get_num_threads()


def run_probe(cfg: AnyConfig, what: str, lr_fixed: bool = False, workers: int = 1) -> Probe:
    """Load the data, check the model, and time every kind of work on this machine.

    The timings use the units' thread count. Unless ``lr_fixed`` (the user set ``train.lr``),
    it also picks the learning rate, a short range test: ``train.lr`` times ``LR_DECREASE``^k
    (k < ``LR_TRIES``), ``LR_PROBE_STEPS`` steps each at that constant rate on one batch; among
    the rates whose loss stays finite and, over the second half of the steps, below
    ``LR_GROWTH`` times its start, the largest whose mean loss over that half is within
    ``LR_TOLERANCE`` of the lowest wins. With ``workers > 1`` it times
    ``CONTENTION_STEPS`` training steps alone and ``workers`` of them side by side (threads) to
    see how much parallel speed-up the machine offers right now. User mistakes raise one sentence.
    """
    threads = unit_threads(cfg)
    with torch_threads(threads):
        probe = _probe(cfg, what, lr_fixed, workers)
    return replace(probe, threads=threads)


def measure_contention(run: Callable[[int], None], workers: int) -> float:
    """Slow-down of ``run(i)`` (one training run on model i) when ``workers`` run side by side.

    Torch releases the GIL inside its kernels, so threads stand in for worker processes (the
    Python overhead they share makes the estimate err on the slow side). In [1, workers].
    """
    import threading

    _, alone = _timed(lambda: run(0))
    threads = [threading.Thread(target=run, args=(i,)) for i in range(workers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    side = time.perf_counter() - t0
    return float(min(max(side / max(alone, 1e-9), 1.0), workers))


def pick_lr(tries: Sequence[tuple[float, float]]) -> float | None:
    """Of (learning rate, mean loss over the second half of its try; inf: unstable), the
    largest rate whose loss is within ``LR_TOLERANCE`` of the lowest; None when none is stable."""
    finite = [v for _, v in tries if math.isfinite(v)]
    if not finite:
        return None
    return max(r for r, v in tries if v <= LR_TOLERANCE * min(finite))


def _probe(cfg: AnyConfig, what: str, lr_fixed: bool, workers: int) -> Probe:
    """The body of :func:`run_probe` (run under the units' thread count)."""
    import torch

    from ntklab.experiments.tidy import row
    from ntklab.kernels.empirical import empirical_ntk
    from ntklab.report.figures import scaling_figure
    from ntklab.scaling import fit_with_ci
    from ntklab.train import evaluate, train

    t_start = time.perf_counter()
    splits, first_load_s = _timed(lambda: load_data(cfg))
    # the first load may generate, download or cache the data; the experiments load it again
    load_s = _timed(lambda: load_data(cfg))[1] if first_load_s > 0.5 else first_load_s
    if len(splits.x_train) < 16:
        raise DataError(f"the training set has {len(splits.x_train)} samples; explain needs at least 16.")
    k = splits.num_outputs
    model, init_s = _timed(lambda: check_model(cfg, splits.x_train, k, what))
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if n_params == 0:
        raise ArchError(f"{what} has no trainable parameters.")

    # training: a warm-up step, then tries of LR_PROBE_STEPS steps at a constant learning rate
    # (train.lr, then lowered by LR_DECREASE), judged by the mean loss over the second half of
    # the try; a try is unstable when a loss of its second half exceeds LR_GROWTH times the
    # first (a transient spike of the first steps, common with Adam and BatchNorm, is allowed).
    # A dozen steps favour small rates, which learn a little faster at first and slower later:
    # the largest stable rate within LR_TOLERANCE of the lowest loss wins.
    b = min(cfg.train.batch_size, len(splits.x_train))
    x, y = torch.as_tensor(splits.x_train[:b]), torch.as_tensor(splits.y_train[:b])
    lab = torch.as_tensor(splits.labels_train[:b], dtype=torch.long)

    def tail_loss(n: int, lr: float) -> float:
        """Mean loss of the second half of n steps at ``lr`` (inf when it diverges)."""
        tc = cfg.train.model_copy(update={"lr": lr, "schedule": "constant", "warmup_steps": 0})
        try:
            model = build_model(cfg, x.shape[1:], k)
            res = train(model, x, y, lab, tc, seed=0, steps=n, log_every=1, progress=False)
        except FloatingPointError:
            return math.inf
        losses = [h["train_loss"] for h in res.history]
        late = losses[len(losses) // 2 :]
        if not losses or not all(math.isfinite(v) for v in losses) or max(late) > LR_GROWTH * losses[0]:
            return math.inf
        return float(np.mean(late))

    tail_loss(1, cfg.train.lr)  # warm-up: first-call costs are paid once per process
    lr = cfg.train.lr
    tries: list[tuple[float, float]] = []  # (rate, loss)
    times = []
    for _ in range(1 if lr_fixed else LR_TRIES):
        loss, t_n = _timed(lambda lr=lr: tail_loss(LR_PROBE_STEPS, lr))
        times.append(t_n)
        earlier = [v for _, v in tries if math.isfinite(v)]
        tries.append((lr, loss))
        if math.isfinite(loss) and earlier and loss >= min(earlier):
            break  # stable but worse than a larger rate: smaller rates only learn slower
        lr *= LR_DECREASE
    chosen = pick_lr(tries)
    stable = chosen is not None
    if chosen is not None:
        lr = chosen
    else:
        lr = cfg.train.lr if lr_fixed else lr / LR_DECREASE
    t_n = float(np.median(times))
    step_s = max(t_n - init_s, t_n / 2) / LR_PROBE_STEPS
    if t_n < STEP_PROBE_S and stable:  # a quick model: a dozen steps are mostly overhead and
        steps = min(STEP_PROBE_MAX, math.ceil(STEP_PROBE_S / max(step_s, 1e-6)))  # noise: time
        runs = [_timed(lambda: tail_loss(steps, lr))[1] for _ in range(3)]  # ~STEP_PROBE_S runs
        step_s = max(float(np.median(runs)) - init_s, 0.5 * float(np.median(runs))) / steps
    contention = 1.0
    if workers > 1:
        tc = cfg.train.model_copy(update={"lr": lr, "schedule": "constant", "warmup_steps": 0})
        nets = [build_model(cfg, x.shape[1:], k) for _ in range(workers)]

        def run(i: int) -> None:
            try:
                train(nets[i], x, y, lab, tc, seed=0, steps=CONTENTION_STEPS, progress=False)
            except FloatingPointError:
                pass

        contention = measure_contention(run, workers)
    ev = min(256, len(splits.x_train))
    xe = torch.as_tensor(splits.x_train[:ev])
    ye, le = torch.as_tensor(splits.y_train[:ev]), torch.as_tensor(splits.labels_train[:ev], dtype=torch.long)
    _, t_ev = _timed(lambda: evaluate(model, xe, ye, le))
    fwd_s = t_ev / ev

    # eNTK of the model at init in eval mode, with the run's mode and memory budget
    kc = cfg.kernel
    budget = kc.memory_budget_mb * 2**20
    fresh = build_model(cfg, x.shape[1:], k).eval()
    m = min(32, len(splits.x_train))

    def entk(points: int, stats: dict[str, Any]) -> None:
        empirical_ntk(
            fresh,
            torch.as_tensor(splits.x_train[:points]),
            mode=kc.mode,
            output_index=kc.output_index,
            memory_budget_bytes=budget,
            progress=False,
            stats=stats,
        )

    stats: dict[str, Any] = {}
    try:
        entk(4, {})  # warm-up: imports and first-call costs are paid once per process
        _, t_small = _timed(lambda: entk(4, {}))
        _, t_m = _timed(lambda: entk(m, stats))
        if t_m < ENTK_PROBE_S and len(splits.x_train) > m:  # quick: a larger block, 3 times
            m = min(4 * m, len(splits.x_train))
            runs = []
            for _ in range(3):
                st: dict[str, Any] = {}
                runs.append((_timed(lambda st=st: entk(m, st))[1], st))
            t_m, stats = sorted(runs, key=lambda r: r[0])[1]  # the median run (load comes and goes)
    except NtkLabError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's model: one sentence, before any work
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ArchError(f"the eNTK of {what} cannot be computed: {type(exc).__name__}: {first}") from None
    pairs = m * (m + 1) / 2
    if "features_s" in stats and "contract_s" in stats:
        feature_s = stats["features_s"] / m
        pair_s = stats["contract_s"] / pairs
        overhead = max(0.0, t_m - stats["features_s"] - stats["contract_s"])
    else:  # an engine without timings: everything per sample, conservatively
        feature_s, pair_s, overhead = t_m / m, t_m / pairs, 0.0
    n_cot = Mode(kc.mode, k).n_cot
    feature_bytes = 4 * n_cot * n_params

    # kernel regression on a full-rank kernel
    n_r = REGRESS_PROBE_N
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((n_r + 64, 2 * n_r))
    kern = feats @ feats.T
    yy = rng.standard_normal((n_r + 64, max(k, 1)))

    def regress() -> None:
        reg = kc.regressor().fit(kern[:n_r, :n_r], yy[:n_r])
        reg.select(kern[n_r:, :n_r], yy[n_r:])
        reg.predict(kern[n_r:, :n_r])

    # the driver's BLAS threads: one per core left free by the units (the measured parallel
    # speed-up); several BLAS threads on busy cores make small eigensolvers 100x slower
    blas = max(1, round(workers / contention)) if workers > 1 else 0
    restore = limit_blas(blas)
    try:
        regress()  # warm-up (LAPACK initialisation)
        regress_s = float(np.median([_timed(regress)[1] for _ in range(3)]))  # BLAS timings are noisy
    finally:
        restore()

    # one power-law fit with the bootstrap, one figure
    grid = np.array([32, 64, 128, 256])
    losses = 1.0 / np.sqrt(grid) * (1 + 0.1 * rng.standard_normal((2, 4)))
    _, fit_s = _timed(lambda: fit_with_ci(grid, losses, offset=cfg.fit.offset, n_boot=cfg.fit.bootstrap))
    rows = [
        row("probe", meth, int(n), 0, s, -1, "test_mse", float(losses[s, i]))
        for meth in ("nn", "entk")
        for s in range(2)
        for i, n in enumerate(grid)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        scaling_figure(rows, {}, "test_mse", Path(tmp) / "warm.png")  # fonts are loaded once
        _, figure_s = _timed(lambda: scaling_figure(rows, {}, "test_mse", Path(tmp) / "probe.png"))

    infinite_pair_s = 0.0
    if cfg.arch.factory is None:  # a spec model: the plan adds its infinite NTK
        from ntklab.experiments.common import build_spec

        spec = build_spec(cfg.arch, k)

        def infinite(m: int) -> None:
            xi = torch.as_tensor(splits.x_train[:m], dtype=torch.float64)
            spec.kernel_fn(xi, None, get=("nngp", "ntk"), memory_budget_bytes=budget, progress=False)

        infinite(4)  # warm-up
        mi = min(INFINITE_PROBE_N[0], len(splits.x_train))
        t_i = _timed(lambda: infinite(mi))[1]
        if t_i < ENTK_PROBE_S / 4 and len(splits.x_train) > mi:  # quick (an MLP): per-call
            mi = min(INFINITE_PROBE_N[1], len(splits.x_train))  # overheads would dominate
            t_i = float(np.median([_timed(lambda: infinite(mi))[1] for _ in range(3)]))
        infinite_pair_s = t_i / (mi * (mi + 1) / 2)

    return Probe(
        load_s=load_s,
        init_s=init_s,
        step_s=step_s,
        fwd_s=fwd_s,
        feature_s=feature_s,
        pair_s=pair_s,
        entk_overhead_s=max(overhead, t_small - 4 * feature_s),
        feature_bytes=feature_bytes,
        regress_s=regress_s,
        fit_s=fit_s,
        figure_s=figure_s,
        infinite_pair_s=infinite_pair_s,
        pool=len(splits.x_train),
        n_test_max=len(splits.x_test),
        num_outputs=k,
        n_params=n_params,
        batch=cfg.train.batch_size,
        lr=lr,
        lr_stable=stable,
        contention=contention,
        seconds=time.perf_counter() - t_start,
        blas_threads=blas,
    )
