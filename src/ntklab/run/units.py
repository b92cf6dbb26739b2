"""Units of work: train one network, compute one kernel. Cached by content, run anywhere.

A :class:`Unit` names a function (by import path, so it can be shipped to a Ray worker or a
worker process), its keyword arguments, and the config values it reads. Its :attr:`Unit.key`
hashes exactly these with the unit's code version, so a change to any of them computes a new
result, an unchanged unit is never recomputed, and two experiments that plan the same unit
(e.g. ``data-scaling``'s eNTK at init, reused by ``width-scaling``) share one stored result.

What the key deliberately leaves out (see :attr:`Unit.key`): the label, the resources, the
memory budget, the device, the thread count, the torch version and the ntklab version. They
change how a result is computed (at most its last bits), not what it is.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

import numpy as np


def _canonical(obj: Any) -> Any:
    """JSON fallback for the key: NumPy scalars/arrays become Python values, paths strings.

    Anything else is a ``TypeError``: an object whose ``str`` changes between processes (say,
    one with a memory address in its repr) would give a new key on every run and silently
    defeat the cache, so it is refused instead.
    """
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"unit args/reads must be JSON-serialisable; got {type(obj).__name__}: {obj!r}")


@dataclass(frozen=True)
class Unit:
    """One cacheable piece of work.

    Attributes
    ----------
    kind : str
        ``"train"``, ``"entk"``, ``"infinite"``, ... (for progress and status).
    fn : str
        ``"module:function"``; called as ``fn(ctx, **args)`` and returns a picklable result.
    args : dict
        JSON-serialisable keyword arguments.
    reads : dict
        The config values the unit depends on (JSON-serialisable): every value that changes
        the result, and nothing else, so that experiments can share units.
    version : int
        The unit function's code version; bump it when the function's results change.
    label : str
        A short human-readable name (not part of the key).
    resources : dict
        What one run needs, e.g. ``{"num_cpus": 1, "num_gpus": 0}`` (not part of the key).
        ``num_cpus`` is also the number of torch threads the unit runs with, in every executor,
        so that a unit gives the same bits whichever executor runs it.
    after : tuple of str
        Keys of units whose stored results this unit reads (``ctx.store``); every executor
        starts it only once they are stored (not part of the key: the key of what it reads
        is already determined by its own args and reads).
    check_finite : bool
        Record the unit as failed when its result holds a float array with NaN or inf (a NaN
        kernel would otherwise only crash the analysis). Set False where NaN is meaningful.
    """

    kind: str
    fn: str
    args: dict[str, Any]
    reads: dict[str, Any]
    version: int = 1
    label: str = ""
    resources: dict[str, float] = field(default_factory=lambda: {"num_cpus": 1})
    after: tuple[str, ...] = ()
    check_finite: bool = True

    @property
    def key(self) -> str:
        """24 hex digits of SHA-256 over (kind, fn, args, reads, version).

        NumPy scalars hash like the Python numbers they equal (``n=np.int64(64)`` and ``n=64``
        are one unit). The package version is deliberately not hashed: a release that does not
        change a unit's numbers must not throw away hours of kernels, and an editable install
        does not bump it anyway; the per-unit ``version`` is the switch for changed numbers.
        """
        payload = json.dumps(
            {"kind": self.kind, "fn": self.fn, "args": self.args, "reads": self.reads, "v": self.version},
            sort_keys=True,
            default=_canonical,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:24]

    @property
    def threads(self) -> int:
        """Torch intra-op threads for this unit: its ``num_cpus`` (at least 1)."""
        return max(1, int(self.resources.get("num_cpus", 1)))

    def function(self) -> Callable[..., Any]:
        """The unit function, imported from its ``module:function`` path."""
        module, name = self.fn.split(":")
        return getattr(importlib.import_module(module), name)


def derive_seed(base: int, *tags: str | int) -> int:
    """A named seed: a 63-bit integer derived from ``base`` and the tags (e.g. "init", 2)."""
    words = [int(base)] + [
        int.from_bytes(hashlib.sha256(str(t).encode()).digest()[:4], "little") for t in tags
    ]
    return int(
        np.random.SeedSequence(words).generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> np.uint64(1)
    )
