"""``ntklab explain``: does the NTK explain *my* network? One call on the user's model and data.

Given a model (a factory returning a fresh ``nn.Module``, or an architecture from ntklab's spec)
and data (an ``.npz``, a registered dataset, or a dict of arrays), :func:`explain`

1. loads the data and checks the model on it (one-sentence errors, before any work);
2. **probes** this machine with the units' thread count (:func:`run_probe`): a learning-rate
   range test of a few training steps (unless ``train.lr`` is given), the time of a training
   step alone and with one per worker side by side (the parallel speed-up available now), the
   eNTK of a small batch (features per sample, contraction per entry, from the engine's own
   timings), one kernel regression, one power-law fit, one figure and the data loading;
3. **plans** the largest experiments that fit ``SAFETY`` of the budget (default 10 minutes):
   the n grid, seeds, the training rule, validation/test points, the after-kernel's n₀ and
   the evolution run's size and checkpoints (:func:`choose_plan`). The networks train by a
   stated rule, epochs with a floor of steps and early stopping on the validation split
   (``TRAIN_RULES``, the first the data-scaling default); the plan shrinks n, seeds and test
   points before it shortens training, and trains below a useful length (``SHORT_RULES``) only
   as a last resort, which the report says. Every unit of every candidate plan is costed by
   :class:`CostModel` (training ∝ steps, eNTK ∝ features + entries with the engine's tiling,
   regression ∝ n³) and the units are list-scheduled on the workers; units shared between
   experiments or already stored cost nothing; analysis, figures and data loading are added;
4. **runs** ``data-scaling`` (network vs eNTK at init, and the infinite NTK for spec models),
   ``pretrained-kernel`` (the after-kernel at one n₀) and ``kernel-evolution`` (kernel
   distance and velocity during training), each with :func:`~ntklab.run.runner.run_experiment`
   into a sub-folder of the output folder, on a pool of single-threaded worker processes
   (:class:`PlanExecutor`) under one progress bar. It measures its own elapsed time: measured
   unit times recalibrate the cost model, a later repetition (seed) of an experiment starts
   only if all of it fits the experiment's share of the time, no unit starts that would end
   past the budget, and before each experiment the rest of the plan is re-planned
   (:func:`replan`): shrunk or dropped when running late, grown when ahead of time (early
   stopping ends most training before its planned steps; the calibration measures how much);
5. writes ``report.html`` (self-contained) and ``report.md`` with the exponent tables, a
   plain-language verdict per finding (:mod:`ntklab.report`), the training rule, and whether
   the network at the largest n is at least as good as kernel regression with its eNTK at
   init, or why not (:func:`network_check`).

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

import contextlib
import copy
import hashlib
import inspect
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ntklab.config import DATASETS, AnyConfig, apply_overrides, read_toml, validate
from ntklab.errors import ArchError, DataError, NtkLabError, RunDirError
from ntklab.run.units import Unit

if TYPE_CHECKING:
    from torch import nn

DEFAULT_BUDGET_MINUTES = 10.0
EXPERIMENTS = ("data-scaling", "pretrained-kernel", "kernel-evolution")
SAFETY = 0.85  # plan at most this fraction of the time left (the executor guards the rest)
LATE_SAFETY = 0.9  # when re-planning after an experiment, with the calibrated cost model
HEAD_SHARE = 0.6  # data scaling may take at most this share of the planned time
#: Training rules (epochs, at least this many steps) the planner chooses from, the longest
#: first; every one trains with early stopping on the validation split. The first is the data
#: scaling default (config.SCALING_TRAIN). The plan shrinks n, seeds and test points before it
#: shortens training, and goes below the last of these ("a useful length") only as a last
#: resort, which the report then says.
TRAIN_RULES = ((100.0, 1000), (50.0, 500), (30.0, 300))
SHORT_RULES = ((15.0, 150), (8.0, 80))  # last resorts: too short to trust the network
N_USEFUL = 512  # with a longer rule left, n_max shrinks only down to this before training does
CONTENTION_STEPS = 4  # training steps timed alone and side by side (one per worker)
MIN_SPEEDUP = 1.25  # below this parallel speed-up (probe), units run in process
CALIBRATION_EVIDENCE = 0.1  # recalibrate once this fraction of the planned work was measured
MIN_FACTOR = 0.25  # the calibration may lower the estimates 4-fold at most (the plan then grows)
ENTK_PROBE_S = 0.2  # an eNTK probe quicker than this is timed again on 4x the samples
GROW_BELOW = 0.7  # re-plan larger when the rest is estimated below this share of the time left
#: Share of the planned steps an early-stopped training run is planned to take until runs of
#: this explain were measured (patience 0.3 stops it after at least 30 %; measured 31-36 % on
#: an MLP on MNIST-1D and a ResNet on CIFAR-10). Only plans use it; whether a unit may start
#: before the end of the budget is judged at its full length.
STOP_PRIOR = 0.6
WORKER_START_S = 8.0  # spawning the worker processes and importing torch there
REPORT_RESERVE_S = 3.0  # writing report.html / report.md
LADDER_MAX = 4096  # the largest training set the planner considers
REGRESS_PROBE_N = 512  # kernel regression is timed at this n and scaled as n³ (at least 1/8)
LR_PROBE_STEPS = 12  # training steps of each learning-rate try (on one batch)
LR_TRIES = 4  # train.lr, then lowered by LR_DECREASE up to 3 times
LR_DECREASE = 0.25
LR_GROWTH = 2.0  # a try is unstable when a loss of its second half exceeds this times its first
LR_TOLERANCE = 1.25  # the largest rate whose loss is within this factor of the lowest wins
FIGURES_PER_EXPERIMENT = {"data-scaling": 1, "pretrained-kernel": 2, "kernel-evolution": 4}
SECTIONS_OF = {"pretrained": "pretrained-kernel", "evolution": "kernel-evolution"}


# ============================================================================= inputs


@dataclass(frozen=True)
class Inputs:
    """The user's request, resolved.

    Attributes
    ----------
    model : str or None
        ``"/abs/path.py:function"`` of a user model, or None for ntklab's spec (``arch``).
    model_desc, data_desc : str
        How the report names them.
    base : dict
        The raw config shared by all experiments (no ``experiment`` key, no experiment sections).
    sections : dict
        User-given experiment sections (``pretrained``, ``evolution``), applied to their experiment.
    fixed : tuple of str
        Dotted keys the user set; the planner leaves them alone.
    n_cap : int or None
        Largest training-set size the plan may use.
    budget_s : float
    identity : str
        What identifies the model and data beyond the config (content hashes of generated files).
    """

    model: str | None
    model_desc: str
    data_desc: str
    base: dict[str, Any]
    sections: dict[str, dict[str, Any]]
    fixed: tuple[str, ...]
    n_cap: int | None
    budget_s: float
    identity: str = ""

    def digest(self) -> str:
        """A short hash of everything that defines the explain run (resume only on a match)."""
        payload = json.dumps(
            {
                "base": self.base,
                "sections": self.sections,
                "fixed": self.fixed,
                "n_cap": self.n_cap,
                "budget_s": self.budget_s,
                "identity": self.identity,
            },
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _dotted(raw: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys of a nested mapping's leaves."""
    out = []
    for k, v in raw.items():
        key = f"{prefix}{k}"
        out += _dotted(v, f"{key}.") if isinstance(v, Mapping) else [key]
    return out


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``top`` merged in, recursively (copies)."""
    out = copy.deepcopy(base)
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def _factory_params(fn: Callable[..., Any]) -> list[str]:
    """The parameters of ``fn`` among ``input_shape`` and ``num_outputs`` (what ntklab passes)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return []
    return [p for p in ("input_shape", "num_outputs") if p in params]


def callable_source(fn: Callable[..., Any]) -> str | None:
    """``"/abs/file.py:name"`` when ``fn`` is defined at the top level of an imported Python
    module that :func:`~ntklab.arch.factory.load_factory` can load again; else None (lambdas,
    closures, partials, and functions of the running script or notebook, ``__main__``)."""
    from ntklab.arch.factory import load_factory

    name, qual = getattr(fn, "__name__", None), getattr(fn, "__qualname__", None)
    if not name or name != qual or name == "<lambda>":
        return None
    if getattr(fn, "__module__", None) == "__main__":
        return None  # loading the user's script again would run it again: pickle it instead
    try:
        src = inspect.getsourcefile(fn)
    except TypeError:
        return None
    if not src or not Path(src).is_file() or Path(src).suffix != ".py":
        return None
    ref = f"{Path(src).resolve()}:{name}"
    try:
        load_factory(ref)
    except NtkLabError:
        return None
    return ref


SHIM = '''"""Written by ntklab explain: rebuilds a model callable that has no importable source.

The callable was pickled (cloudpickle) next to this file as {pkl!r}; ntklab calls
``make_model`` once per seed, under a seeded RNG.
"""

import pickle
from pathlib import Path


def make_model({params}):
    with open(Path(__file__).with_name({pkl!r}), "rb") as f:
        fn = pickle.load(f)
    return fn({call})
'''


def pickle_callable(fn: Callable[..., Any]) -> tuple[str, dict[str, bytes]]:
    """Pickle ``fn`` (lambda, closure, partial...) as ``user-model-HASH.pkl`` with a loader
    ``user-model-HASH.py`` beside it.

    Returns (the loader's file name, {file name: bytes}) to be written into the output folder;
    the reference is ``FOLDER/user-model-HASH.py:make_model``. The hash of the pickle makes the
    reference, and so every unit key, change when the callable changes.
    """
    try:
        import cloudpickle
    except ImportError:  # pragma: no cover - cloudpickle ships with ray; optional
        raise ArchError(
            "the model callable has no importable source (a lambda, closure or partial); define it at the "
            "top level of a .py file, or install cloudpickle."
        ) from None
    try:
        blob = cloudpickle.dumps(fn)
    except Exception as exc:  # noqa: BLE001 - the user's object: one sentence
        raise ArchError(f"the model callable cannot be pickled ({type(exc).__name__}: {exc}).") from None
    stem = f"user-model-{_sha(blob)}"
    params = _factory_params(fn)
    shim = SHIM.format(
        pkl=f"{stem}.pkl", params=", ".join(params), call=", ".join(f"{p}={p}" for p in params)
    )
    return f"{stem}.py", {f"{stem}.pkl": blob, f"{stem}.py": shim.encode()}


def _validate_arrays(data: Mapping[str, Any]) -> bytes:
    """Check a dict of arrays like an ``.npz`` and return its ``.npz`` bytes."""
    import io

    from ntklab.data.npz import KEYS, load_npz

    missing = [k for k in KEYS if k not in data]
    if missing:
        raise DataError(f"the data dict lacks key(s) {', '.join(missing)}; it needs {', '.join(KEYS)}.")
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(data[k]) for k in KEYS})
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "data.npz"
        p.write_bytes(buf.getvalue())
        try:
            load_npz(p)
        except DataError as exc:
            raise DataError(str(exc).replace(f"data file {p}", "the data dict")) from None
    return buf.getvalue()


def resolve_inputs(
    model: str | Callable[..., Any] | None,
    data: str | Path | Mapping[str, Any],
    *,
    out: Path | None,
    budget_minutes: float = DEFAULT_BUDGET_MINUTES,
    data_path: str | Path | None = None,
    arch: str | None = None,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    n_max: int | None = None,
) -> tuple[Inputs, Path, dict[str, bytes]]:
    """Resolve the request; returns (inputs, out folder, files to write into it before running).

    Raises one-sentence :class:`~ntklab.errors.NtkLabError` subclasses for every user mistake.
    """
    from ntklab.arch.factory import load_factory

    if not (
        isinstance(budget_minutes, (int, float)) and budget_minutes > 0 and math.isfinite(budget_minutes)
    ):
        raise NtkLabError(f"the budget must be a positive number of minutes; got {budget_minutes!r}.")
    if n_max is not None and n_max < 8:
        raise NtkLabError(f"--n-max must be at least 8; got {n_max}.")
    user = read_toml(config) if config is not None else {}
    user = apply_overrides(user, list(overrides))
    user.pop("experiment", None)
    sections = {k: user.pop(k) for k in list(user) if k in SECTIONS_OF}
    for k in ("widths", "probe_size"):
        user.pop(k, None)
    fixed = set(_dotted(user)) | {f"{k}.{s}" for k, v in sections.items() for s in _dotted(v)}
    cap = n_max
    data_cfg = user.setdefault("data", {})
    if "n_max" in data_cfg:  # a user n_max caps the plan; the grid itself is planned
        cap = min(cap or LADDER_MAX, int(data_cfg.pop("n_max")))
    data_cfg.pop("n_min", None)
    data_cfg.pop("grid_factor", None)
    files: dict[str, bytes] = {}
    identity: dict[str, str] = {}

    # ---- data
    if isinstance(data, Mapping):
        blob = _validate_arrays(data)
        digest = _sha(blob)
        name = f"data-{digest}.npz"
        files[name] = blob
        identity["data"] = digest
        data_cfg.update(name="npz", path=name)  # made absolute once the out folder is known
        data_desc = f"arrays passed in Python (saved as {name})"
    else:
        text = str(data)
        p = Path(text)
        if p.suffix == ".npz" or p.is_file():
            from ntklab.data.npz import load_npz

            load_npz(p)  # one-sentence DataError: missing file, missing key, bad shapes
            data_cfg.update(name="npz", path=str(p.resolve()))
            data_desc = f".npz file {p}"
        elif text in DATASETS and text != "npz":
            data_cfg["name"] = text
            if data_path is not None:
                data_cfg["path"] = str(Path(data_path).resolve())
            elif text not in ("mnist1d", "digits") and not data_cfg.get("path"):
                raise DataError(
                    f"dataset {text} is read from disk: give --data-path with the folder of its files."
                )
            data_desc = f"{text}" + (f" ({data_cfg['path']})" if data_cfg.get("path") else "")
        else:
            allowed = ", ".join(d for d in DATASETS if d != "npz")
            raise DataError(
                f"--data {text!r} is neither an existing .npz file nor a dataset name ({allowed})."
            )

    # ---- model
    arch_cfg = user.setdefault("arch", {})
    model_ref: str | None = None
    shim_name: str | None = None
    if model is None:
        if arch is not None:
            arch_cfg["name"] = arch
        if arch_cfg.get("factory"):
            model_ref = str(arch_cfg.pop("factory"))
    elif isinstance(model, (str, Path)):
        model_ref = str(model)
    elif callable(model):
        model_ref = callable_source(model)
        if model_ref is None:
            shim_name, shim_files = pickle_callable(model)
            files.update(shim_files)
            identity["model"] = shim_name
    else:
        raise ArchError(
            f"the model must be PATH.py:FUNCTION or a callable returning an nn.Module; got {type(model).__name__}."
        )
    if model_ref is not None:
        path_text, _, fn_name = model_ref.rpartition(":")
        if not path_text:
            raise ArchError(f"a model factory is given as PATH.py:FUNCTION; got {model_ref!r}.")
        model_ref = f"{Path(path_text).resolve()}:{fn_name}"
        load_factory(model_ref)  # one sentence: no file, import error, no such function
        identity["model"] = _sha(Path(path_text).read_bytes())
        model_desc = f"user model {model_ref}"
    elif shim_name is not None:
        model_desc = f"user model callable {getattr(model, '__qualname__', type(model).__name__)}"
    else:
        model_desc = f"ntklab {arch_cfg.get('name', 'cnn1d')} spec"

    budget_s = float(budget_minutes) * 60.0
    ident = json.dumps(identity, sort_keys=True)
    provisional = Inputs(
        None, model_desc, data_desc, user, sections, tuple(sorted(fixed)), cap, budget_s, ident
    )
    out_dir = Path(out) if out is not None else Path("runs") / f"explain-{provisional.digest()}"
    if shim_name is not None:
        model_ref = f"{(out_dir / shim_name).resolve()}:make_model"
    if isinstance(data, Mapping):
        data_cfg["path"] = str((out_dir / data_cfg["path"]).resolve())
    if model_ref is not None:
        arch_cfg["factory"] = model_ref
        # run.runner.check_inputs builds arch.name's spec even for a factory model; an MLP spec
        # accepts any input shape, so this keeps that check from rejecting the user's model
        # (explain checks the user model itself, see check_model).
        arch_cfg["name"] = "mlp"
    inputs = Inputs(
        model_ref,
        model_desc,
        data_desc,
        user,
        sections,
        tuple(sorted(fixed)),
        cap,
        budget_s,
        ident,
    )
    validate({**user, "experiment": "data-scaling"})  # config errors before any work
    return inputs, out_dir, files


# ============================================================================= probe


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


def load_data(cfg: AnyConfig) -> Any:
    """The prepared splits with the whole training pool (no validation split carved out).

    Read and preprocessed as the experiments' :func:`ntklab.data.registry.load_splits` does
    (the registry's loader and checks, classes, standardization, ZCA, ``downsample``,
    ``channels``), reading at most ``LADDER_MAX`` plus the validation split of on-disk
    datasets; ``load_splits`` itself would refuse a pool smaller than what it reads.
    """
    from ntklab.data.prepare import prepare
    from ntklab.data.registry import load_raw

    d = cfg.data
    raw = load_raw(d, LADDER_MAX)
    return prepare(
        raw,
        n_max=1,
        n_val=0,
        n_test=None,
        seed=d.seed,
        classes=d.classes,
        standardize=d.standardize,
        zca=d.zca,
        downsample=d.downsample,
        channels=d.channels,
    )


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
    from ntklab.regress import KernelRegressor
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
    n_cot = k if kc.mode in ("trace", "full") else 1
    feature_bytes = 4 * n_cot * n_params

    # kernel regression on a full-rank kernel
    n_r = REGRESS_PROBE_N
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((n_r + 64, 2 * n_r))
    kern = feats @ feats.T
    yy = rng.standard_normal((n_r + 64, max(k, 1)))

    def regress() -> None:
        reg = KernelRegressor(kc.ridges if kc.ridge is None else [kc.ridge]).fit(kern[:n_r, :n_r], yy[:n_r])
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
    if cfg.arch.factory is None and {"ntk", "nngp"} & set(cfg.methods):
        from ntklab.experiments.common import build_spec

        spec = build_spec(cfg.arch, k)
        mi = min(16, len(splits.x_train))
        xi = torch.as_tensor(splits.x_train[:mi], dtype=torch.float64)
        _, t_i = _timed(lambda: spec.kernel_fn(xi, None, get=("nngp", "ntk"), memory_budget_bytes=budget))
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


# ============================================================================= cost model


class CostModel:
    """Seconds of every unit and of every experiment, from a :class:`Probe`.

    Unit estimates (one worker, the units' thread count), times the calibration ``factor``:

    * training: ``init + steps · step_s · max(min(B, n) / B, 1/4) + fwd_s · (V · evals + n + T)``
      (V validation points evaluated ``train.evals + 1`` times when there is a validation split,
      then the n training and T test points); with early stopping the steps and evaluations are
      scaled by ``stop_fraction``, the fraction of the planned steps that early-stopped runs of
      this explain run took so far (1 until measured);
    * eNTK with n training points (symmetric block) and E evaluation points (cross block), with
      the panels of :mod:`ntklab.kernels.tiling` (its ``RESIDENT_SHARE`` and ``FEATURES_SHARE``
      of the memory budget, at ``feature_bytes`` per sample): features computed once when they
      fit, else those of the columns after each panel again for every panel (symmetric), or
      those of the n training columns again for every panel of E rows (cross). Seconds:
      ``overhead + feature_s · samples + pair_s · entries``;
    * infinite NTK/NNGP: ``infinite_pair_s`` per entry;
    * kernel regression: ``regress_s · max(1/8, (n / 512)³)`` per kernel and n.

    An experiment's wall time (:meth:`experiment`) is the list schedule of its units in plan
    order on ``workers`` workers (a unit starts once the units it reads are done), slowed by
    the probe's ``contention`` when several workers share the machine, plus data loading (driver and
    workers) and the analysis in the driver (regressions, fits, figures).
    """

    def __init__(
        self,
        probe: Probe,
        workers: int = 1,
        factor: float = 1.0,
        budget_bytes: int = 2**31,
        stop_fraction: float = 1.0,
    ) -> None:
        self.p = probe
        self.workers = max(1, workers)
        self.factor = factor
        self.budget_bytes = budget_bytes
        self.stop_fraction = stop_fraction

    def scaled(self, factor: float) -> CostModel:
        """The same model with calibration ``factor``."""
        return CostModel(self.p, self.workers, factor, self.budget_bytes, self.stop_fraction)

    @property
    def slow(self) -> float:
        """How much slower a unit runs beside the others (the probe's contention, with workers)."""
        return self.p.contention if self.workers > 1 else 1.0

    # ---- pieces (seconds on one worker)
    def train(
        self, n: int, steps: float, n_test: int, evals: int = 1, n_val: int = 0, val_evals: float = 0
    ) -> float:
        """Seconds of training n samples for ``steps`` steps, with ``evals`` evaluations of the
        n training and ``n_test`` test points and ``val_evals`` of ``n_val`` validation points."""
        p = self.p
        frac = max(min(p.batch, n) / max(p.batch, 1), 0.25)
        fwd = p.fwd_s * ((n + n_test) * evals + n_val * val_evals)
        return self.factor * (p.init_s + steps * p.step_s * frac + fwd)

    def feature_samples(self, n: int, n_eval: int) -> int:
        """Samples whose eNTK features the engine computes for the blocks K(n, n) and K(E, n)."""
        from ntklab.kernels.empirical.budget import FEATURES_SHARE, RESIDENT_SHARE

        fb = max(self.p.feature_bytes, 1)
        resident = int(RESIDENT_SHARE * self.budget_bytes) // fb
        m = max(2, int(FEATURES_SHARE * self.budget_bytes) // fb)
        if n <= resident:
            samples = n
        else:  # panels of R rows; each panel recomputes the columns after it
            r = max(1, min(n, 2 * m // 3))
            samples = n + sum(max(0, n - (i + 1) * r) for i in range(math.ceil(n / r)))
        if n_eval:
            if n_eval + n <= m:
                samples += n_eval + n
            else:  # panels of R evaluation rows; each recomputes the n training columns
                r = max(1, min(n_eval, 2 * m // 3))
                samples += n_eval + math.ceil(n_eval / r) * n
        return samples

    def entk(self, n: int, n_eval: int) -> float:
        """Seconds of the eNTK blocks on n training and ``n_eval`` evaluation points."""
        p = self.p
        samples = self.feature_samples(n, n_eval)
        entries = n * (n + 1) / 2 + n_eval * n
        calls = 2 if n_eval else 1
        return self.factor * (
            p.init_s + calls * p.entk_overhead_s + samples * p.feature_s + entries * p.pair_s
        )

    def infinite(self, n: int, n_eval: int) -> float:
        """Seconds of the infinite NTK and NNGP blocks."""
        return self.factor * self.p.infinite_pair_s * (n * (n + 1) / 2 + n_eval * n)

    def regress(self, n: int) -> float:
        """Seconds of one kernel regression (the ridge grid) at n."""
        return self.factor * self.p.regress_s * max(0.125, (n / REGRESS_PROBE_N) ** 3)

    def network(self, cfg: AnyConfig, n: int, steps: int | None = None, taken: int | None = None) -> float:
        """Seconds of one network of ``cfg`` trained on n points by its rule (or ``steps``) and
        evaluated: ``taken`` steps when known, else the planned ones, early-stopped by
        ``stop_fraction``."""
        planned = int(steps if steps is not None else cfg.train.total_steps(n))
        tc, t = cfg.train, _n_test(cfg, self.p)
        frac = 1.0
        if taken is not None:
            frac = min(1.0, taken / max(planned, 1))
        elif tc.early_stopping and cfg.data.n_val > 0:
            frac = self.stop_fraction
        val_evals = (tc.evals + 1) * frac if cfg.data.n_val > 0 else 0.0
        return self.train(n, planned * frac, t, n_val=cfg.data.n_val, val_evals=val_evals)

    # ---- units
    def unit(self, cfg: AnyConfig, u: Unit, taken: int | None = None) -> float:
        """Estimated seconds of unit ``u`` of experiment ``cfg`` on one worker (``taken``: the
        training steps it took, once known)."""
        a, fn = u.args, u.fn.rpartition(":")[2]
        t = _n_test(cfg, self.p)
        e = cfg.data.n_val + t

        def steps_of(n: int) -> int:
            return int(a.get("steps") or cfg.train.total_steps(n))

        if fn == "train_network":
            return self.network(cfg, a["n"], a.get("steps"), taken)
        if fn == "entk_at_init":
            return self.entk(a["n"], e)
        if (
            fn == "infinite_block"
        ):  # train[rows] x train[cols] (triangle on the diagonal), or eval x train[cols]
            c = a["cols"][1] - a["cols"][0]
            r = e if a["part"] == "cross" else a["rows"][1] - a["rows"][0]
            pairs = c * (c + 1) / 2 if a["part"] == "train" and a["rows"] == a["cols"] else r * c
            return self.factor * self.p.infinite_pair_s * pairs
        if fn == "train_with_checkpoints":
            return self.train(a["n"], steps_of(a["n"]), t, evals=len(a.get("checkpoint_steps", [])) + 1)
        if fn == "kernels_at_checkpoint":
            return self.entk(a["n_train"], e) + self.entk(a.get("probe_test", 0), 0)
        if fn == "after_kernel":  # pre-train on n0, then the eNTK on n training points
            pre = self.network(cfg, a["n0"], a.get("steps"), taken)
            return pre + self.entk(a["n"], e) - self.factor * self.p.init_s
        # units of experiments written later: judged by their kind and arguments (conservative)
        n = int(a.get("n") or a.get("n_train") or a.get("n0") or cfg.data.n_max)
        if u.kind == "train":
            return self.train(n, steps_of(n), t)
        if u.kind == "infinite":
            return self.infinite(n, e)
        if u.kind in ("entk", "kernel"):
            return self.entk(n, e)
        return self.train(n, steps_of(n), t) + self.entk(max(n, cfg.data.n_max), e)

    # ---- analysis (regressions, fits, figures) of one experiment, in the driver
    def analysis(self, cfg: AnyConfig) -> float:
        """Seconds of ``cfg``'s analysis in the driver: regressions, fits, figures."""
        p, grid = self.p, cfg.data.n_grid()
        figs = FIGURES_PER_EXPERIMENT.get(cfg.experiment, 2) * p.figure_s
        if cfg.experiment == "kernel-evolution":
            ev = cfg.evolution
            ckpts = ev.n_checkpoints + 6  # log-spaced steps round to fewer; milestones add some
            probe_n = ev.probe_train + ev.probe_test
            eig = self.regress(probe_n) / 4
            kt = sum(self.regress(n) for n in grid if n < ev.regress_n) + self.regress(ev.regress_n)
            return self.factor * figs + cfg.seeds * ckpts * (eig + kt)
        kernels = cfg.seeds * ("entk" in cfg.methods) + sum(m in ("ntk", "nngp") for m in cfg.methods)
        if cfg.experiment == "pretrained-kernel":
            kernels += cfg.seeds * len(cfg.pretrained.n0) + (
                cfg.seeds * len(grid) if cfg.pretrained.grow else 0
            )
        fits = len(cfg.methods) + 2
        return self.factor * (figs + fits * p.fit_s) + kernels * sum(self.regress(n) for n in grid)

    def experiment(self, cfg: AnyConfig, units: Sequence[Unit], skip: Callable[[str], bool]) -> float:
        """Wall seconds of experiment ``cfg``: its units not ``skip``-ped (cached or planned
        earlier) scheduled on the workers, data loading and the analysis."""
        items = []
        seen: set[str] = set()
        for u in units:
            if u.key in seen or skip(u.key):
                continue
            seen.add(u.key)
            items.append((u.key, self.unit(cfg, u), tuple(getattr(u, "after", ()))))
        wall = list_schedule(items, self.workers) * self.slow
        loads = self.p.load_s * (2 if items and self.workers > 1 else 1)
        return self.factor * loads + wall + self.analysis(cfg)


def list_schedule(items: Sequence[tuple[str, float, tuple[str, ...]]], workers: int) -> float:
    """Makespan of (key, seconds, keys it waits for) run in order on ``workers`` workers: each
    starts on the first free worker once the units it waits for (among ``items``) have ended."""
    free = [0.0] * max(1, workers)
    end: dict[str, float] = {}
    for key, secs, after in items:
        i = min(range(len(free)), key=free.__getitem__)
        start = max([free[i], *(end[k] for k in after if k in end)])
        free[i] = end[key] = start + secs
    return max(free)


def _n_test(cfg: AnyConfig, probe: Probe) -> int:
    return probe.n_test_max if cfg.data.n_test is None else min(cfg.data.n_test, probe.n_test_max)


# ============================================================================= plans


@dataclass(frozen=True)
class Head:
    """The data-scaling part of a plan (shared by the other experiments: data, seeds, training).

    The networks train by a rule, ``epochs`` with at least ``min_steps`` steps and early
    stopping on the validation split (:meth:`ntklab.config.TrainConfig.total_steps`); None for
    both: the training length the user set (``train.steps`` / ``train.epochs``). ``steps`` is
    what the rule plans at ``n_max``; ``short``: the rule is below a useful length (a last resort).
    """

    n_max: int
    n_min: int
    seeds: int
    steps: int
    n_val: int
    n_test: int
    factor: float = 2.0  # the grid n_min · factor^k lands on n_max (3 or 4 points)
    lr: float | None = None  # the probe's stable learning rate (None: the config's)
    epochs: float | None = None
    min_steps: int | None = None
    short: bool = False


@dataclass(frozen=True)
class Tail:
    """The after-kernel and kernel-evolution parts of a plan.

    ``rank``: the preference of :func:`tail_levels` (lower first; from ``PARTIAL`` on, an
    experiment is dropped).
    """

    pretrained: bool
    n0: int
    grow: bool
    evolution: bool
    checkpoints: int
    probe: int  # probe_train = regress_n; probe_test = min(probe, n_test)
    evo_n: int = 0  # the evolution run's training-set size (0: n_max)
    pk_seeds: int = 0  # repetitions of the after-kernel (0: the head's seeds)
    rank: int = 0

    def pretrained_part(self) -> tuple[bool, int, bool, int]:
        """What defines the after-kernel experiment."""
        return (self.pretrained, self.n0, self.grow, self.pk_seeds)


@dataclass
class Plan:
    """A full plan: the configs of the experiments to run and their estimated seconds."""

    head: Head
    tail: Tail
    configs: dict[str, AnyConfig]
    estimates: dict[str, float]
    fits: bool = True

    @property
    def total(self) -> float:
        return sum(self.estimates.values())

    def describe(self) -> dict[str, Any]:
        """The plan's numbers for ``explain.json`` and the report."""
        ds = self.configs.get("data-scaling")
        d: dict[str, Any] = {
            "n_grid": ds.data.n_grid() if ds else [],
            "seeds": ds.seeds if ds else self.head.seeds,
            "steps": ds.train.total_steps(self.head.n_max) if ds else self.head.steps,
            "lr": ds.train.lr if ds else self.head.lr,
            "n_val": self.head.n_val,
            "n_test": self.head.n_test,
        }
        if ds is not None:
            d["training"] = training_rule(ds, self.head.short)
        pk = self.configs.get("pretrained-kernel")
        if pk is not None:
            d.update(n0=pk.pretrained.n0[0], grow=pk.pretrained.grow)
        ke = self.configs.get("kernel-evolution")
        if ke is not None:
            d.update(
                evolution_n=ke.evolution.n,
                checkpoints=ke.evolution.n_checkpoints,
                probe=ke.evolution.probe_train,
            )
        d["estimated_seconds"] = {k: round(v, 1) for k, v in self.estimates.items()}
        return d


_MISSING = object()


def training_rule(cfg: AnyConfig, short: bool = False) -> str:
    """The rule the networks of ``cfg`` train by, in words, with the steps it plans on the grid."""
    tc, grid = cfg.train, cfg.data.n_grid()
    if tc.epochs is not None:
        length = f"{tc.epochs:g} epochs, at least {tc.min_steps} steps" + (
            f", at most {tc.max_steps}" if tc.max_steps is not None else ""
        )
    else:
        length = f"{tc.total_steps(grid[-1])} steps"
    steps = sorted({tc.total_steps(n) for n in grid})
    planned = f"{steps[0]}" if len(steps) == 1 else f"{steps[0]}–{steps[-1]}"
    stop = (
        f", early stopping on {cfg.data.n_val} validation points (patience {tc.patience:g} of training; "
        "best-validation weights kept)"
        if tc.early_stopping and cfg.data.n_val > 0
        else ", to the end"
    )
    text = (
        f"{tc.optimizer} lr {tc.lr:.3g}, {tc.schedule} schedule, batch {tc.batch_size}, {length} "
        f"({planned} planned steps on n = {grid[0]}..{grid[-1]}){stop}"
    )
    if short:
        text += "; shortened below a useful length to fit the budget: the networks may be under-trained"
    return text


def _get(raw: Mapping[str, Any], dotted: str) -> Any:
    """The value at dotted key ``dotted`` of ``raw``, or ``_MISSING``."""
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _pow2_down(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


def _user_length(inputs: Inputs) -> bool:
    """Whether the user set how long the networks train (``train.steps`` or ``train.epochs``)."""
    return any(_get(inputs.base, f"train.{k}") is not _MISSING for k in ("steps", "epochs"))


def rule_steps(epochs: float, min_steps: int, n: int, batch: int, max_steps: int | None = None) -> int:
    """Steps of the rule ``epochs`` with at least ``min_steps`` on n points (TrainConfig.total_steps)."""
    steps = max(1, min_steps, math.ceil(epochs * n / max(min(batch, n), 1)))
    return min(steps, max_steps) if max_steps is not None else steps


def head_levels(inputs: Inputs, probe: Probe) -> list[Head]:
    """Data-scaling plans from the largest to the smallest, in order of preference.

    n_max runs over the largest pool size allowed and the powers of two below it (down to
    32); the grid is 4 points from n_max/8 to n_max (3 when n_max is tiny), geometric. Training
    gets the share it needs: for each rule of ``TRAIN_RULES`` (longest first), n_max shrinks
    down to ``N_USEFUL`` (with 3 then 2 seeds, 1000/500/250 test points) before the next,
    shorter rule is tried; the last useful rule goes down to the smallest n_max, then again on
    one seed, and only then come the ``SHORT_RULES`` (marked ``short``). Values the user set
    (seeds, training length, n_val, n_test) are kept.
    """
    floor = max(8, 2 * probe.num_outputs)
    cap = min(inputs.n_cap or LADDER_MAX, LADDER_MAX)
    fixed_val, fixed_test, fixed_seeds, fixed_min, fixed_max = (
        _get(inputs.base, k)
        for k in ("data.n_val", "data.n_test", "seeds", "train.min_steps", "train.max_steps")
    )
    lr = None if _get(inputs.base, "train.lr") is not _MISSING else probe.lr or None
    max_steps = None if fixed_max is _MISSING else fixed_max

    def n_val_for(n_max: int) -> int:
        return int(fixed_val) if fixed_val is not _MISSING else int(min(256, max(32, n_max // 4)))

    top = min(cap, probe.pool - n_val_for(min(cap, probe.pool)))
    if top < 8:
        raise DataError(
            f"the training pool has {probe.pool} samples; too few for a data-scaling plan with a validation split."
        )
    n_maxes = [top] + [q for q in (_pow2_down(top) >> i for i in range(12)) if 32 <= q < top]
    useful = min(N_USEFUL, top)
    tests = (1000, 500, 250)
    long_variants = ((3, 0), (2, 0), (2, 1), (2, 2))
    levels: list[tuple[float | None, int | None, bool, list[int], tuple[tuple[int, int], ...]]] = []
    if _user_length(inputs):  # the user's training length: only n, seeds and test points shrink
        levels.append((None, None, False, n_maxes, long_variants))
    else:
        for k, (epochs, min_steps) in enumerate(TRAIN_RULES):
            last = k == len(TRAIN_RULES) - 1
            levels.append(
                (epochs, min_steps, False, [q for q in n_maxes if last or q >= useful], long_variants)
            )
        levels.append((*TRAIN_RULES[-1], False, n_maxes, ((1, 2),)))  # one seed before short training
        levels += [(e, m, True, n_maxes[-3:], ((2, 2),)) for e, m in SHORT_RULES]
    out: list[Head] = []
    for epochs, min_steps, short, tops, variants in levels:
        for top_n in tops:
            n_val = n_val_for(top_n)
            n_max = min(top_n, probe.pool - n_val)
            n_min = max(min(floor, n_max // 4), n_max // 8, 2)
            ratio = n_max / n_min
            factor = ratio ** (1 / (3 if ratio >= 6 else 2))
            if epochs is None:
                steps = 0  # the user's length: make_configs reads it from the config
            else:
                m = int(fixed_min) if fixed_min is not _MISSING else int(min_steps or 0)
                steps = rule_steps(epochs, m, n_max, probe.batch, max_steps)
            for seeds, ti in variants:
                t = min(probe.n_test_max, tests[ti]) if fixed_test is _MISSING else int(fixed_test)
                s = seeds if fixed_seeds is _MISSING else int(fixed_seeds)
                out.append(
                    Head(n_max, n_min, s, steps, n_val, t, round(factor, 6), lr, epochs, min_steps, short)
                )
    return list(dict.fromkeys(out))


#: The after-kernel's sizes, largest first: (grow: also n₀ = n at every n, one seed only).
PRETRAINED_LEVELS = ((True, False), (False, False), (False, True))
#: The evolution run's sizes, largest first: (checkpoints, probe points, its n = n_max / this).
EVOLUTION_LEVELS = (
    (24, 1024, 1),
    (20, 768, 1),
    (16, 512, 1),
    (12, 384, 1),
    (10, 256, 1),
    (8, 128, 1),
    (6, 128, 1),
    (5, 64, 1),
    (4, 64, 1),
    (4, 64, 2),
    (4, 32, 4),
)
PARTIAL = 1000  # tails of this rank and above drop an experiment


def tail_levels(head: Head, available: Sequence[str]) -> list[Tail]:
    """After-kernel and evolution plans, in order of preference (``Tail.rank``).

    First every pair of an after-kernel size (n₀ = n_max/2, also n₀ = n at every n; then
    n₀ = n_max/2 alone; then that on one seed) and an evolution size (on n_max, then n_max/2,
    n_max/4 points, with 24 down to 4 checkpoints and probes of 1024 down to 32 points); the
    rank is the sum of the two sizes' places, so the budget is shared between both experiments.
    Then evolution only (rank ``PARTIAL`` + its place), after-kernel only, neither.
    """
    n0 = max(head.n_min, head.n_max // 2)
    one = 1 if head.seeds > 1 else 0
    pk = [(g, one if single else 0) for g, single in PRETRAINED_LEVELS if not (single and not one)]

    def evolution(i: int) -> tuple[int, int, int]:
        ckpts, probe, div = EVOLUTION_LEVELS[i]
        evo_n = max(head.n_max // div, min(16, head.n_max))
        return ckpts, min(probe, evo_n), evo_n

    out = []
    for a, (grow, seeds) in enumerate(pk):
        for b in range(len(EVOLUTION_LEVELS)):
            out.append(Tail(True, n0, grow, True, *evolution(b), seeds, a + b))
    out.sort(key=lambda t: t.rank)  # stable: of one rank, the larger after-kernel first
    out += [Tail(False, n0, False, True, *evolution(b), 0, PARTIAL + b) for b in range(len(EVOLUTION_LEVELS))]
    out += [
        Tail(True, n0, g, False, *evolution(len(EVOLUTION_LEVELS) - 1), s, 2 * PARTIAL + a)
        for a, (g, s) in enumerate(pk)
    ]
    out.append(Tail(False, n0, False, False, *evolution(len(EVOLUTION_LEVELS) - 1), 0, 3 * PARTIAL))
    has_pk, has_evo = "pretrained-kernel" in available, "kernel-evolution" in available
    kept = []
    for t in out:
        if (t.pretrained and not has_pk) or (t.evolution and not has_evo):
            continue  # the same plan as a tail without that experiment
        kept.append(t)
    return kept


def make_configs(inputs: Inputs, head: Head, tail: Tail) -> dict[str, AnyConfig]:
    """The validated configs of a (head, tail) plan; the user's own settings always win.

    Data scaling and the after-kernel train by the head's rule (early stopping on the
    validation split); the evolution run trains its n points for the steps the same rule
    plans there, to the end (its checkpoints are spread over the whole of training).
    """
    spec = inputs.model is None
    train: dict[str, Any] = {"lr": head.lr} if head.lr else {}
    if head.epochs is not None and not _user_length(inputs):
        train.update(epochs=head.epochs, min_steps=head.min_steps, early_stopping=True)
    base = _deep_merge(
        {
            "seeds": head.seeds,
            "train": train,
            "data": {"n_val": head.n_val, "n_test": head.n_test},
            "methods": ["nn", "entk", "ntk"] if spec else ["nn", "entk"],
        },
        inputs.base,
    )
    base["data"].update(n_min=head.n_min, n_max=head.n_max, grid_factor=head.factor)
    ds = validate({**base, "experiment": "data-scaling"})
    configs: dict[str, AnyConfig] = {"data-scaling": ds}
    # the other experiments share every section of data scaling exactly (experiments may have
    # other section defaults), so they train the same networks and reuse its units
    base = {k: v for k, v in ds.model_dump(mode="json").items() if k != "experiment"}
    if tail.pretrained:
        raw = _deep_merge(
            {
                **base,
                "seeds": tail.pk_seeds or head.seeds,
                "pretrained": {"n0": [tail.n0], "grow": tail.grow},
            },
            {"pretrained": inputs.sections.get("pretrained", {})},
        )
        configs["pretrained-kernel"] = validate({**raw, "experiment": "pretrained-kernel"})
    if tail.evolution:
        evo_n = tail.evo_n or head.n_max
        evo = {
            "n": evo_n,
            "n_checkpoints": tail.checkpoints,
            "probe_train": tail.probe,
            "probe_test": min(tail.probe, head.n_test),
            "regress_n": tail.probe,
        }
        fixed_length = {**base["train"], "epochs": None, "steps": ds.train.total_steps(evo_n)}
        raw = _deep_merge(
            {**base, "seeds": 1, "evolution": evo, "train": {**fixed_length, "early_stopping": False}},
            {"evolution": inputs.sections.get("evolution", {})},
        )
        configs["kernel-evolution"] = validate({**raw, "experiment": "kernel-evolution"})
    return configs


def available_experiments() -> list[str]:
    """The experiments of :data:`EXPERIMENTS` whose modules this install has."""
    import importlib.util

    from ntklab import experiments

    return [e for e in EXPERIMENTS if importlib.util.find_spec(experiments.MODULES[e]) is not None]


def plan_units(name: str, cfg: AnyConfig) -> list[Unit]:
    """The units of experiment ``name`` with config ``cfg``."""
    from ntklab import experiments

    return experiments.get(name).plan(cfg)


class Estimator:
    """Estimated wall seconds of experiments; units already stored, or planned by an earlier
    experiment of the same plan, cost nothing (their keys are shared)."""

    def __init__(self, costs: CostModel, store: Any) -> None:
        self.costs, self.store = costs, store
        self._stored: dict[str, bool] = {}

    def forget(self) -> None:
        """Forget what the store held (units stored since are free from now on)."""
        self._stored.clear()

    def stored(self, key: str) -> bool:
        """Whether the store holds unit ``key`` (memoized)."""
        if key not in self._stored:
            self._stored[key] = bool(self.store.has(key))
        return self._stored[key]

    def __call__(self, configs: Mapping[str, AnyConfig], earlier: set[str] | None = None) -> dict[str, float]:
        """Estimated wall seconds of each experiment of ``configs``, run in order after ``earlier`` keys."""
        seen = set(earlier or ())
        out = {}
        for name, cfg in configs.items():
            units = plan_units(name, cfg)
            out[name] = self.costs.experiment(cfg, units, lambda k, seen=seen: k in seen or self.stored(k))
            seen |= {u.key for u in units}
        return out


def _best_fit(
    inputs: Inputs,
    head: Head,
    tails: Sequence[Tail],
    estimator: Estimator,
    seconds: float,
    names: Sequence[str] | None = None,
) -> tuple[Tail, dict[str, AnyConfig], dict[str, float]] | None:
    """The first of ``tails`` (in order of preference) whose plan (its experiments among
    ``names``; all when None) fits ``seconds``; None when none fits."""
    for tail in tails:
        configs = make_configs(inputs, head, tail)
        if names is not None:
            configs = {k: v for k, v in configs.items() if k in names}
        est = estimator(configs)
        if sum(est.values()) <= seconds:
            return tail, configs, est
    return None


def choose_plan(inputs: Inputs, probe: Probe, estimator: Estimator, seconds: float) -> Plan:
    """The largest plan whose estimate fits ``seconds``.

    The heads of :func:`head_levels` that train to a useful length first: the first whose data
    scaling takes at most ``HEAD_SHARE`` of ``seconds`` with the most preferred tail that keeps
    every available experiment and fits; else the first with the most preferred tail that
    fits, dropping experiments (training keeps its share before the other experiments do).
    Then the same with the ``short`` heads. When nothing fits, the smallest head and smallest
    full tail with ``fits = False``.
    """
    avail = available_experiments()
    heads = head_levels(inputs, probe)
    for group in ([h for h in heads if not h.short], [h for h in heads if h.short]):
        for head in group:
            tails = tail_levels(head, avail)
            if estimator(make_configs(inputs, head, tails[-1]))["data-scaling"] > HEAD_SHARE * seconds:
                continue
            found = _best_fit(inputs, head, [t for t in tails if t.rank < PARTIAL], estimator, seconds)
            if found is not None:
                return Plan(head, *found)
        for head in group:
            tails = tail_levels(head, avail)
            if estimator(make_configs(inputs, head, tails[-1]))["data-scaling"] > seconds:
                continue
            found = _best_fit(inputs, head, tails, estimator, seconds)
            if found is not None:
                return Plan(head, *found)
    head = heads[-1]
    tails = tail_levels(head, avail)
    tail = [t for t in tails if t.rank < PARTIAL][-1] if tails[0].rank < PARTIAL else tails[-1]
    configs = make_configs(inputs, head, tail)
    return Plan(head, tail, configs, estimator(configs), fits=False)


def replan(
    inputs: Inputs, plan: Plan, estimator: Estimator, seconds: float, remaining: Sequence[str]
) -> Plan:
    """Re-plan the experiments ``remaining`` (those still to run, also ones dropped earlier) to
    fit ``seconds``: the most preferred tail that fits, keeping the experiments already run as
    they are; ``fits = False`` and none of them when nothing fits."""
    tails = tail_levels(plan.head, available_experiments())
    if "pretrained-kernel" not in remaining:  # it ran (or was dropped) as it is
        tails = [t for t in tails if t.pretrained_part() == plan.tail.pretrained_part()] or tails
    kept = {k: v for k, v in plan.configs.items() if k not in remaining}
    found = _best_fit(inputs, plan.head, tails, estimator, seconds, remaining)
    if found is None:
        return Plan(plan.head, tails[-1], kept, plan.estimates, fits=False)
    tail, todo, est = found
    return Plan(plan.head, tail, {**kept, **todo}, {**plan.estimates, **est})


# ============================================================================= execution


@dataclass
class Clock:
    """The budget: seconds since ``start`` (``time.perf_counter``) against ``budget_s``."""

    start: float
    budget_s: float

    def elapsed(self) -> float:
        """Seconds since the start."""
        return time.perf_counter() - self.start

    def left(self) -> float:
        """Seconds of budget left (negative when over)."""
        return self.budget_s - self.elapsed()


@dataclass
class Calibration:
    """Measured vs estimated seconds of the work done so far; ``factor`` scales later estimates.

    ``min_seconds``: how much measured work the factor needs (the first units of a process
    also pay one-off costs, imports and warm-up, so a little work says little). Training
    units are compared with their estimate at the steps they took, and their planned and
    taken steps give ``stop_fraction``, how much of the plan early stopping leaves.
    """

    estimated: float = 0.0
    actual: float = 0.0
    min_seconds: float = 3.0
    planned_steps: int = 0
    taken_steps: int = 0
    trainings: int = 0

    def add(self, estimated: float, actual: float) -> None:
        """Record one piece of work: its uncalibrated estimate and its measured seconds."""
        self.estimated += estimated
        self.actual += actual

    def add_training(self, planned: int, taken: int) -> None:
        """Record one early-stopped training run: steps planned and taken."""
        self.planned_steps += max(int(planned), 0)
        self.taken_steps += max(int(taken), 0)
        self.trainings += 1

    @property
    def factor(self) -> float:
        """actual / estimated once ``min_seconds`` of work were measured, in [MIN_FACTOR, 10]."""
        if self.actual < self.min_seconds or self.estimated <= 0:
            return 1.0
        return max(MIN_FACTOR, min(self.actual / self.estimated, 10.0))

    @property
    def stop_fraction(self) -> float:
        """Steps taken / planned by the early-stopped training runs (``STOP_PRIOR`` until 2
        were measured)."""
        if self.trainings < 2 or self.planned_steps <= 0:
            return STOP_PRIOR
        return max(0.05, min(1.0, self.taken_steps / self.planned_steps))


class PlanExecutor:
    """Runs an experiment's units under the explain budget, on a process pool or in process.

    Units start in plan order once the units they read (``Unit.after``) are stored, on the
    first free worker (``pool``: a ``ProcessPoolExecutor`` whose workers run
    :func:`ntklab.run.executors.run_in_worker`; None: in this process). Time is checked per
    repetition (the units with one ``seed_index``), because a repetition missing some n would
    cost the exponent fits those n for every repetition:

    * the first repetition is always admitted; a later one only if all its units, scheduled on
      the workers with the calibrated estimates, end before ``deadline`` (the experiment's
      share of the budget); otherwise it is skipped whole;
    * any unit whose calibrated estimate at full length (training not stopped early) would end
      after ``hard_deadline`` (the end of the budget, less the analysis and report) is
      skipped, with every unit not started yet; for
      the first repetition the limit is ``first_deadline`` (the end of the budget less the
      report: an analysis of nothing is worth nothing, and its estimate is the noisiest).

    Skipped units stay missing in the store (not failed), so running explain again computes
    them. Updates the shared progress ``bar`` and the ``calibration`` (uncalibrated estimate
    vs measured seconds of every unit run).
    """

    name = "explain"

    def __init__(
        self,
        cfg: AnyConfig,
        costs: CostModel,
        deadline: float,
        calibration: Calibration,
        bar: Any,
        pool: Any = None,
        workers: int = 1,
        hard_deadline: float | None = None,
        first_deadline: float | None = None,
    ) -> None:
        self.cfg, self.costs, self.deadline = cfg, costs.scaled(1.0), deadline
        self.full = CostModel(costs.p, costs.workers, 1.0, costs.budget_bytes)  # no early stopping
        self.hard_deadline = deadline if hard_deadline is None else max(hard_deadline, deadline)
        self.first_deadline = self.hard_deadline if first_deadline is None else first_deadline
        self.calibration, self.bar, self.pool = calibration, bar, pool
        self.workers = workers if pool is not None else 1
        self.skipped: list[str] = []
        self.unit_seconds = 0.0

    def close(self) -> None:
        """The pool belongs to :func:`explain`; nothing to release here."""

    @property
    def slow(self) -> float:
        """The contention of units side by side on this executor's workers (1 in process)."""
        return self.costs.p.contention if self.workers > 1 else 1.0

    def _group_fits(self, group: list[Unit], busy: int) -> bool:
        """Whether the units of one repetition, scheduled on the free workers, end before the deadline."""
        items = [(u.key, self.costs.unit(self.cfg, u), tuple(getattr(u, "after", ()))) for u in group]
        wall = list_schedule(items, max(1, self.workers - busy)) * self.slow * self.calibration.factor
        return time.perf_counter() + wall <= self.deadline

    def _measured(self, u: Unit, est: float, secs: float, store: Any) -> None:
        """Calibrate on a finished unit: a training run is compared with its estimate at the
        steps it took (early stopping is not a faster machine), and side by side with other
        units with its estimate slowed by the contention (as the experiment estimates are)."""
        fn = u.fn.rpartition(":")[2]
        if fn == "train_network":
            try:
                res = store.load(u.key)
                taken, planned = int(res["steps"]), int(res.get("planned_steps") or 0)
            except Exception:  # noqa: BLE001 - an older result or a store race: plain estimate
                taken = planned = 0
            if planned > 0:
                est = self.costs.unit(self.cfg, u, taken=taken)
                if self.cfg.train.early_stopping:
                    self.calibration.add_training(planned, taken)
        self.calibration.add(est * self.slow, secs)

    def run(
        self,
        units: Sequence[Unit],
        ctx: Any,
        store: Any,
        *,
        retry_failed: bool = False,
        progress: bool | None = None,
    ) -> Any:
        """Run the missing units of ``units`` (the executor interface of :mod:`ntklab.run.executors`)."""
        from concurrent.futures import FIRST_COMPLETED, wait

        from ntklab.run.executors import config_payload, execute_unit, pending, run_in_worker

        if callable(ctx) and not hasattr(ctx, "cfg"):  # an older interface passed a factory
            ctx = ctx()
        if getattr(ctx, "store", None) is None:
            ctx.store = store  # units that read other units' results
        todo, out = pending(units, store, retry_failed)
        self.bar.update(len(out.cached) + len(out.failed))
        waiting = list(todo)
        running: dict[Any, tuple[Unit, float, float]] = {}
        payload = config_payload(ctx) if self.pool is not None else None
        seed_of = {u.key: u.args.get("seed_index") for u in todo}
        first = min((v for v in seed_of.values() if isinstance(v, int)), default=None)
        admitted: set[Any] = {first, None}

        def skip(labels: list[Unit]) -> None:
            self.skipped += [v.label for v in labels]
            self.bar.update(len(labels))
            for v in labels:
                waiting.remove(v)

        def finished(u: Unit, est: float, secs: float, err: str | None) -> None:
            if err is None:
                self._measured(u, est, secs, store)
            self.unit_seconds += secs
            out.add(u.key, secs, err)
            self.bar.set_postfix_str(f"{self.cfg.experiment}: {u.label}")
            self.bar.update(1)

        while waiting or running:
            started = True
            while waiting and len(running) < self.workers and started:
                started = False
                for u in list(waiting):
                    deps = tuple(getattr(u, "after", ()))
                    if any(k in out.failed for k in deps):
                        waiting.remove(u)
                        out.failed[u.key] = f"DependencyError: a unit it reads failed ({u.label})"
                        self.bar.update(1)
                        started = True
                        break
                    if not all(store.has(k) for k in deps):
                        continue
                    seed = seed_of[u.key]
                    if seed not in admitted:
                        group = [v for v in waiting if seed_of[v.key] == seed]
                        if not self._group_fits(group, len(running)):
                            skip(group)
                            started = True
                            break
                        admitted.add(seed)
                    est = self.costs.unit(self.cfg, u)  # uncalibrated: calibration compares with it
                    limit = self.first_deadline if seed == first else self.hard_deadline
                    longest = self.full.unit(self.cfg, u)  # early stopping may not come
                    if time.perf_counter() + longest * self.slow * self.calibration.factor > limit:
                        skip(list(waiting))
                        break
                    waiting.remove(u)
                    started = True
                    if self.pool is None:
                        key, secs, err = execute_unit(u, ctx, store)
                        finished(u, est, secs, err)
                    else:
                        cfg_json, digest = payload
                        fut = self.pool.submit(run_in_worker, cfg_json, digest, str(store.root), None, u)
                        running[fut] = (u, est, time.perf_counter())
                    break
            if running:
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in done:
                    u, est, t0 = running.pop(fut)
                    res = fut.result()
                    if res.get("user_error") is not None:
                        raise res["user_error"]
                    if res.get("cached"):
                        out.cached.append(u.key)
                        self.bar.update(1)
                    else:
                        finished(u, est, time.perf_counter() - t0, res.get("error"))
            elif waiting and not started:  # nothing can start: what they read is missing
                skip(list(waiting))
        return out


def default_workers() -> int:
    """Worker processes for the units: the CPUs this process may use (units run single-threaded)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def start_pool(workers: int) -> Any:
    """A ``spawn`` process pool of ``workers`` workers, already importing ntklab (None for 1)."""
    if workers <= 1:
        return None
    import importlib
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    for _ in range(workers):
        pool.submit(importlib.import_module, "ntklab.experiments.units")
    return pool


def stop_pool(pool: Any, now: bool = False) -> None:
    """Shut the pool down: wait for its workers, or (``now``, on an interrupt) terminate them."""
    if pool is None:
        return
    if not now:
        pool.shutdown(wait=True)
        return
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=5)


def describe_config(cfg: AnyConfig) -> str:
    """One line with what the planner chose for ``cfg``."""
    if cfg.experiment == "pretrained-kernel":
        grow = " and at n0 = n" if cfg.pretrained.grow else ""
        return f"after-kernel at n0 = {cfg.pretrained.n0[0]}{grow}, {cfg.seeds} seeds"
    if cfg.experiment == "kernel-evolution":
        ev = cfg.evolution
        return (
            f"n = {ev.n}, {ev.n_checkpoints} checkpoints, probe {ev.probe_train} train / {ev.probe_test} test, "
            f"{cfg.train.total_steps(ev.n)} training steps (no early stopping)"
        )
    return (
        f"n ∈ {{{', '.join(map(str, cfg.data.n_grid()))}}}, {cfg.seeds} seeds, "
        f"{cfg.data.n_val} val / {cfg.data.n_test} test points, methods {', '.join(cfg.methods)}; "
        f"training: {training_rule(cfg)}"
    )


def _echo_plan(echo: Callable[[str], None], probe: Probe, plan: Plan, budget_s: float, workers: int) -> None:
    """Print what the probe measured and what the planner chose."""
    echo(
        f"probe {probe.seconds:.1f} s ({probe.threads} thread(s) per unit, {workers} worker(s), "
        f"contention x{probe.contention:.2f}): "
        f"train step {probe.step_s:.3g} s (batch {probe.batch}), eNTK {probe.feature_s:.3g} s/sample "
        f"+ {probe.pair_s * 1e6:.3g} µs/entry, data {probe.load_s:.2g} s; "
        f"{probe.n_params} parameters, {probe.num_outputs} output(s)"
    )
    if not probe.lr_stable:
        echo(
            f"  warning: training diverged in the probe even at learning rate {probe.lr:.3g}; set train.lr lower"
        )
    echo(f"plan for a budget of {budget_s / 60:.3g} min (estimated {plan.total / 60:.2f} min of work):")
    for name, cfg in plan.configs.items():
        echo(f"  {name:<18} {describe_config(cfg)}  (~{plan.estimates.get(name, 0):.0f} s)")
    if not plan.fits:
        echo("  warning: even the smallest plan is estimated past the budget; late units will be skipped.")


def _cfg_json(cfg: AnyConfig) -> dict[str, Any]:
    return cfg.model_dump(mode="json")


def _load_state(out: Path, inputs: Inputs) -> dict[str, Any] | None:
    """The saved state of an explain folder (None for a new one); refuses other inputs or a foreign folder."""
    meta = out / "explain.json"
    if meta.is_file():
        try:
            state = json.loads(meta.read_text())
        except (OSError, ValueError):
            state = None
        if not isinstance(state, dict):
            raise RunDirError(f"{meta} is not readable JSON; remove it or choose another --out.") from None
        if state.get("inputs_digest") != inputs.digest():
            raise RunDirError(
                f"{out} holds an explain run with other inputs (model, data, settings or budget); "
                "choose another --out or remove it."
            )
        return state
    if out.exists() and (
        not out.is_dir() or any(not p.name.startswith(("user-model-", "data-")) for p in out.iterdir())
    ):
        raise RunDirError(f"{out} exists and is not an ntklab explain folder; choose another --out.")
    return None


def _save_state(out: Path, state: dict[str, Any]) -> None:
    from ntklab.run.store import atomic_write

    atomic_write(out / "explain.json", json.dumps(state, indent=1, default=str).encode())


def _count_units(configs: Mapping[str, AnyConfig], names: Sequence[str]) -> int:
    return sum(len({u.key for u in plan_units(n, configs[n])}) for n in names if n in configs)


def _resumed_plan(state: dict[str, Any], estimator: Estimator) -> Plan:
    """The plan saved in ``explain.json`` (resume: same configs, same unit keys)."""
    configs = {k: validate(v) for k, v in state["plan_configs"].items()}
    ds = configs["data-scaling"]
    head = Head(
        ds.data.n_max,
        ds.data.n_min,
        ds.seeds,
        ds.train.total_steps(ds.data.n_max),
        ds.data.n_val,
        ds.data.n_test or 0,
        ds.data.grid_factor,
        ds.train.lr,
        ds.train.epochs,
        ds.train.min_steps if ds.train.epochs is not None else None,
        bool(state.get("head_short", False)),
    )
    return Plan(head, Tail(**state["tail"]), configs, estimator(configs))


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
    state = _load_state(out_dir, inputs)
    for name, blob in files.items():  # the generated model loader / data file the probe reads
        if not (out_dir / name).is_file():
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / name).write_bytes(blob)
    base_cfg = validate({**inputs.base, "experiment": "data-scaling"})
    gpu = base_cfg.device == "cuda" or (base_cfg.device == "auto" and torch.cuda.is_available())
    n_workers = workers or (1 if gpu else default_workers())
    lr_fixed = _get(inputs.base, "train.lr") is not _MISSING
    probe = run_probe(base_cfg, inputs.model_desc, lr_fixed=lr_fixed, workers=n_workers)
    restore_blas = limit_blas(probe.blas_threads)  # the analysis runs as the probe timed it
    try:
        return _explain_planned(
            inputs, out_dir, state, probe, base_cfg, clock, n_workers, workers, overrides, config,
            budget_minutes, progress, say,
        )  # fmt: skip
    finally:
        restore_blas()


def _explain_planned(
    inputs: Inputs,
    out_dir: Path,
    state: dict[str, Any] | None,
    probe: Probe,
    base_cfg: AnyConfig,
    clock: Clock,
    n_workers: int,
    workers: int | None,
    overrides: Sequence[str],
    config: str | Path | None,
    budget_minutes: float,
    progress: bool | None,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """:func:`explain` after the probe: plan, run the experiments, write the report."""
    from ntklab.progress import progress_bar
    from ntklab.report.verdicts import verdicts
    from ntklab.report.write import write_report
    from ntklab.run.runner import default_store, run_experiment

    if workers is None and n_workers > 1 and n_workers / probe.contention < MIN_SPEEDUP:
        n_workers = 1  # the cores are busy: worker processes would only add their start-up
    out_dir.mkdir(parents=True, exist_ok=True)
    store = default_store()
    costs = CostModel(
        probe, n_workers, budget_bytes=base_cfg.kernel.memory_budget_mb * 2**20, stop_fraction=STOP_PRIOR
    )
    estimator = Estimator(costs, store)
    reserve = REPORT_RESERVE_S + (WORKER_START_S if n_workers > 1 else 0.0)
    if state is not None and state.get("plan_configs"):
        try:
            plan = _resumed_plan(state, estimator)
        except (KeyError, TypeError, AttributeError, ValueError):  # not the state ntklab wrote
            raise RunDirError(
                f"{out_dir / 'explain.json'} is damaged; remove it or choose another --out."
            ) from None
        say(f"resuming the explain run in {out_dir} (finished units are reused)")
    else:
        plan = choose_plan(inputs, probe, estimator, SAFETY * (clock.left() - reserve))
        state = {
            "version": 1,
            "inputs_digest": inputs.digest(),
            "inputs": {
                "model": inputs.model_desc,
                "data": inputs.data_desc,
                "budget_minutes": budget_minutes,
                "n_max": inputs.n_cap,
                "overrides": list(overrides),
                "config": str(config) if config else None,
            },
            "budget_seconds": clock.budget_s,
            "head_short": plan.head.short,
            "tail": asdict(plan.tail),
            "plan_configs": {k: _cfg_json(v) for k, v in plan.configs.items()},
        }
    missing = [e for e in EXPERIMENTS if e not in available_experiments()]
    state.update(
        probe=asdict(probe),
        workers=n_workers,
        plan=plan.describe(),
        plan_fits=plan.fits,
        experiments=[{"name": n, "dir": n, "status": "pending"} for n in EXPERIMENTS],
        notes=[],
    )
    _echo_plan(say, probe, plan, clock.budget_s, n_workers)
    _save_state(out_dir, state)

    calibration = Calibration(min_seconds=max(3.0, CALIBRATION_EVIDENCE * plan.total))
    summaries: dict[str, dict[str, Any]] = {}
    pool = start_pool(n_workers)
    try:
        with progress_bar(
            total=_count_units(plan.configs, EXPERIMENTS), desc="explain", enabled=progress
        ) as bar:
            for name in EXPERIMENTS:
                plan = _run_one(
                    name, plan, state, inputs, estimator, calibration, clock, bar, pool, n_workers,
                    out_dir, store, summaries, missing, say, run_experiment,
                )  # fmt: skip
    except BaseException:
        stop_pool(pool, now=True)
        raise
    stop_pool(pool)
    ds_cfg = plan.configs.get("data-scaling")
    if ds_cfg is not None and "data-scaling" in summaries:
        kept_at = best_steps(out_dir / "data-scaling" / "results.csv", ds_cfg.data.n_max)
        state["training"] = network_check(ds_cfg, summaries["data-scaling"], plan.head.short, kept_at)
        state["notes"] += state["training"]["notes"]
        for line in state["training"]["notes"]:
            say(line)
    state["calibration_factor"] = round(calibration.factor, 3)
    state["stop_fraction"] = round(calibration.stop_fraction, 3)
    state["seconds"] = round(clock.elapsed() + 1.0, 1)  # the report takes about a second
    _save_state(out_dir, state)
    html_path, md_path = write_report(out_dir)
    for name, summary in summaries.items():
        for v in verdicts(summary):
            say(f"[{name}] {v.text}")
    say(f"report: {html_path} ({clock.elapsed():.0f} s of a {clock.budget_s:.0f} s budget)")
    return {
        **state,
        "summaries": summaries,
        "report_html": str(html_path),
        "report_md": str(md_path),
        "out": str(out_dir),
    }


def _run_one(
    name: str,
    plan: Plan,
    state: dict[str, Any],
    inputs: Inputs,
    estimator: Estimator,
    calibration: Calibration,
    clock: Clock,
    bar: Any,
    pool: Any,
    workers: int,
    out_dir: Path,
    store: Any,
    summaries: dict[str, dict[str, Any]],
    missing: Sequence[str],
    say: Callable[[str], None],
    run_experiment: Callable[..., dict[str, Any]],
) -> Plan:
    """Run experiment ``name`` of ``plan`` (re-planning what is left when running late);
    returns the plan, shrunk or not. Updates ``state``, ``summaries`` and ``explain.json``."""
    rec = next(r for r in state["experiments"] if r["name"] == name)
    costs = estimator.costs
    costs.factor = calibration.factor  # estimates from here on use what was measured so far
    costs.stop_fraction = calibration.stop_fraction
    estimator.forget()  # the units of the experiments run so far are stored now
    left = clock.left() - REPORT_RESERVE_S
    resumed = (out_dir / name / "run.json").is_file()  # ran before: keep its config (same unit keys)
    if name != "data-scaling" and not resumed and "data-scaling" in plan.configs:
        plan = _adjust(name, plan, state, inputs, estimator, left, bar, say)
    if name not in plan.configs:
        note = (
            "no module in this install" if name in missing else f"not enough time left ({max(left, 0):.0f} s)"
        )
        rec.update(status="skipped", note=note)
        return plan
    remaining = [n for n in EXPERIMENTS[EXPERIMENTS.index(name) :] if n in plan.configs]
    est = estimator({n: plan.configs[n] for n in remaining}, set(_done_keys(plan, name)))
    cfg = plan.configs[name]
    state["plan_configs"][name] = _cfg_json(cfg)
    rec.update(status="running", estimated_s=round(est.get(name, 0.0), 1))
    _save_state(out_dir, state)
    # this experiment's slice of the time left: in proportion to its estimate, and at least
    # 1.25 x its estimate (the later experiments are shrunk or dropped if that leaves too little)
    share = est[name] / max(sum(est.values()), 1e-9)
    time_slice = min(max(left * share, 1.25 * est[name]), left)
    raw = costs.scaled(1.0)
    analysis_s = raw.analysis(cfg) + raw.p.load_s
    now, reserve = time.perf_counter(), analysis_s * calibration.factor
    deadline = now + time_slice - reserve
    hard = now + left - reserve  # the later experiments are shrunk or dropped if this runs late
    executor = PlanExecutor(cfg, costs, deadline, calibration, bar, pool, workers, hard, now + left)
    t0 = time.perf_counter()
    try:
        summary = run_experiment(cfg, out_dir / name, executor=executor, store=store, progress=False)
    except NtkLabError:
        raise
    except Exception as exc:  # noqa: BLE001 - one experiment's bug must not lose the others
        msg = f"{type(exc).__name__}: {exc}"
        rec.update(status="failed", note=msg, seconds=round(time.perf_counter() - t0, 1))
        state["notes"].append(f"{name}: failed with {msg}")
        _save_state(out_dir, state)
        return plan
    secs = time.perf_counter() - t0
    if executor.unit_seconds > 0:
        calibration.add(analysis_s, max(0.0, secs - executor.unit_seconds / max(workers, 1)))
    summaries[name] = summary
    rec.update(
        status="partial" if executor.skipped else "done",
        seconds=round(secs, 1),
        skipped_units=executor.skipped,
        failed_units=len(summary.get("failed_units", [])),
    )
    state["seconds"] = round(clock.elapsed(), 1)
    _save_state(out_dir, state)
    return plan


def best_steps(results_csv: Path, n: int) -> list[float]:
    """The steps of the kept weights (``best_step`` rows) of the networks (method ``nn``) at n."""
    import csv

    try:
        with open(results_csv, newline="") as f:
            return [
                float(r["value"])
                for r in csv.DictReader(f)
                if r.get("method") == "nn" and r.get("metric") == "best_step" and int(r.get("n", -1)) == n
            ]
    except (OSError, ValueError, KeyError):
        return []


def network_check(
    cfg: AnyConfig, summary: Mapping[str, Any], short: bool = False, kept_at: Sequence[float] = ()
) -> dict[str, Any]:
    """How data scaling's networks trained, and whether the network at the largest n is at
    least as good as kernel regression with its eNTK at init; when not, why (in ``notes``).
    ``kept_at``: the steps of the kept weights at that n (all 0: early stopping kept the
    network at initialization, which then predicts f0, and says so).

    Returns ``{"rule", "n", "planned_steps", "steps", "best_step", "nn", "entk", "notes"}``
    (losses: the mean over repetitions of ``fit.metric`` at n = ``data.n_max``; None when
    missing).
    """
    n, metric = cfg.data.n_max, cfg.fit.metric
    rule = training_rule(cfg, short)
    losses = summary.get("test_loss_at_n_max") or {}
    nn_loss, entk_loss = losses.get("nn"), losses.get("entk")
    per_n = ((summary.get("training") or {}).get("per_n") or {}).get("nn", {}).get(str(n), {})
    steps, planned = per_n.get("steps"), cfg.train.total_steps(n)
    falling = [
        r
        for r in (summary.get("training") or {}).get("still_falling", [])
        if r.get("n") == n and r.get("method") == "nn"
    ]
    notes = [f"Training rule: {rule}."]
    taken = (
        f"{steps:.0f} of {planned} planned steps on average"
        if steps is not None
        else f"{planned} planned steps"
    )
    at_init = bool(kept_at) and max(kept_at) == 0
    if nn_loss is None or entk_loss is None:
        notes.append(f"At n = {n} the network or the eNTK at init has no result: no comparison.")
    elif at_init:
        notes.append(
            f"At n = {n} early stopping kept every network at initialization (no training step improved its "
            f"validation loss), so the 'trained' network predicts f0 ({metric} {nn_loss:.4g}; kernel regression "
            f"with its eNTK at init: {entk_loss:.4g}): at this n the network learns nothing that generalizes"
            + ("; its training was also shortened below a useful length to fit the budget" if short else "")
            + ". A larger n (a larger budget) or another learning rate (train.lr) may change that."
        )
    elif nn_loss <= entk_loss:
        notes.append(
            f"At n = {n} the trained network ({metric} {nn_loss:.4g}, {taken}) is at least as good as kernel "
            f"regression with its eNTK at init ({entk_loss:.4g})."
        )
    else:
        if short:
            why = "training was shortened below a useful length to fit the budget; give a larger budget"
        elif falling:
            why = (
                "its training loss was still falling when the planned steps ended (under-trained); give a "
                "larger budget, or more train.epochs / train.min_steps"
            )
        elif steps is not None and steps < planned:
            why = (
                "early stopping ended training when the validation loss stopped improving, so more steps "
                "would not help; the network generalizes worse than its linearization at init here, or its "
                "learning rate (train.lr) suits it badly"
            )
        else:
            why = (
                "it trained the planned steps and its training loss had stopped falling; the network "
                "generalizes worse than its linearization at init here, or its learning rate (train.lr) suits it badly"
            )
        notes.append(
            f"At n = {n} the trained network ({metric} {nn_loss:.4g}, {taken}) is worse than kernel regression "
            f"with its eNTK at init ({entk_loss:.4g}): {why}."
        )
    return {
        "rule": rule,
        "n": n,
        "planned_steps": planned,
        "steps": steps,
        "best_step": float(np.mean(kept_at)) if len(kept_at) else None,
        "nn": nn_loss,
        "entk": entk_loss,
        "notes": notes,
    }


def _adjust(
    name: str,
    plan: Plan,
    state: dict[str, Any],
    inputs: Inputs,
    estimator: Estimator,
    left: float,
    bar: Any,
    say: Callable[[str], None],
) -> Plan:
    """Re-plan the rest from experiment ``name`` on (:func:`replan`) when it is estimated past
    ``LATE_SAFETY`` of the ``left`` seconds (running late: it shrinks, experiments may be
    dropped) or below ``GROW_BELOW`` of them (ahead of time: early stopping, a faster machine
    than the probe saw; it grows, experiments dropped earlier may come back); else ``plan``."""
    later = [n for n in EXPERIMENTS[EXPERIMENTS.index(name) :] if n in available_experiments()]
    current = {n: plan.configs[n] for n in later if n in plan.configs}
    now = sum(estimator(current).values())
    late = now > LATE_SAFETY * left
    if not late and now >= GROW_BELOW * left:
        return plan
    new = replan(inputs, plan, estimator, LATE_SAFETY * left, later)
    after = sum(estimator({n: new.configs[n] for n in later if n in new.configs}).values())
    if not late and (not new.fits or after <= now):
        return plan
    if new.tail == plan.tail and set(new.configs) == set(plan.configs):
        return plan
    costs = estimator.costs
    why = (
        f"costs x{costs.factor:.2f}, early stopping ends training after {costs.stop_fraction:.0%} of "
        f"the planned steps, {max(left, 0):.0f} s left"
    )
    say(
        f"running late ({why}): shrank the rest of the plan"
        if late
        else f"ahead of time ({why}): grew the rest of the plan"
    )
    for n in later:
        say(f"  {n:<18} {describe_config(new.configs[n]) if n in new.configs else 'dropped'}")
    for gone in set(plan.configs) - set(new.configs):
        state["notes"].append(f"{gone}: dropped to stay within the budget.")
    bar.total = bar.n + _count_units(new.configs, later)
    bar.refresh()
    state.update(plan=new.describe(), tail=asdict(new.tail))
    return new


def _done_keys(plan: Plan, name: str) -> list[str]:
    """Keys of the units of the experiments before ``name`` (already run: shared units are free)."""
    keys: list[str] = []
    for n in EXPERIMENTS[: EXPERIMENTS.index(name)]:
        if n in plan.configs:
            keys += [u.key for u in plan_units(n, plan.configs[n])]
    return keys
