"""Units of work: train one network, compute one kernel. Cached by content, run anywhere.

A :class:`Unit` names a function (by import path, so it can be shipped to a Ray worker), its
keyword arguments, and the config sections it reads. Its key hashes all of these with the
unit's code version, so a change to any of them computes a new result and an unchanged unit is
never recomputed.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np


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
        The config values the unit depends on (JSON-serialisable).
    version : int
        The unit function's code version; bump it when its results change.
    label : str
        A short human-readable name.
    resources : dict
        What one run needs, e.g. ``{"num_cpus": 1, "num_gpus": 0}`` (used by the Ray executor).
    """

    kind: str
    fn: str
    args: dict[str, Any]
    reads: dict[str, Any]
    version: int = 1
    label: str = ""
    resources: dict[str, float] = field(default_factory=lambda: {"num_cpus": 1})

    @property
    def key(self) -> str:
        payload = json.dumps(
            {"kind": self.kind, "fn": self.fn, "args": self.args, "reads": self.reads, "v": self.version},
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:24]

    def function(self):
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
