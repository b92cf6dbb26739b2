"""The user's request, resolved: model (a file reference or a pickled callable), data, config.

:func:`resolve_inputs` checks every part of the request before any work and raises one
sentence (:class:`~ntklab.errors.NtkLabError`) for each user mistake; :class:`Inputs` is what
the planner starts from.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from ntklab.config.loading import apply_overrides, read_toml, validate
from ntklab.config.sections import DATASETS
from ntklab.errors import ArchError, DataError, NtkLabError

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

DEFAULT_BUDGET_MINUTES = 10.0
LADDER_MAX = 4096  # the largest training set the planner considers
SECTIONS_OF = {"pretrained": "pretrained-kernel", "evolution": "kernel-evolution"}
MISSING = object()  # what get_dotted returns for a key that is not set


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


def deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``top`` merged in, recursively (copies)."""
    out = copy.deepcopy(base)
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
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


class Options(TypedDict, total=False):
    """The options of :func:`ntklab.explain.explain` that :func:`resolve_inputs` reads (each
    as documented there)."""

    budget_minutes: float
    data_path: str | Path | None
    arch: str | None
    config: str | Path | None
    overrides: Sequence[str]
    n_max: int | None


def resolve_inputs(
    model: str | Callable[..., Any] | None,
    data: str | Path | Mapping[str, Any],
    *,
    out: Path | None,
    **options: Unpack[Options],
) -> tuple[Inputs, Path, dict[str, bytes]]:
    """Resolve the request; returns (inputs, out folder, files to write into it before running).

    Raises one-sentence :class:`~ntklab.errors.NtkLabError` subclasses for every user mistake.
    """
    from ntklab.arch.factory import load_factory

    budget_minutes = options.get("budget_minutes", DEFAULT_BUDGET_MINUTES)
    data_path, arch, config = options.get("data_path"), options.get("arch"), options.get("config")
    overrides, n_max = options.get("overrides", ()), options.get("n_max")

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


def get_dotted(raw: Mapping[str, Any], dotted: str) -> Any:
    """The value at dotted key ``dotted`` of ``raw``, or ``MISSING``."""
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return MISSING
        node = node[part]
    return node


def user_length(inputs: Inputs) -> bool:
    """Whether the user set how long the networks train (``train.steps`` or ``train.epochs``)."""
    return any(get_dotted(inputs.base, f"train.{k}") is not MISSING for k in ("steps", "epochs"))
