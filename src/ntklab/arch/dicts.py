"""Layer dictionaries (the config format) -> layer objects.

Format::

    {"layer": "Dense", "width": 512, "W_std": 1.5, "b_std": 0.05, "parameterization": "ntk"}
    {"layer": "Conv", "width": 64, "kernel_size": [3, 3], "stride": [1, 1], "padding": "SAME",
     "W_std": 1.4, "b_std": 0.1, "parameterization": "ntk"}
    {"layer": "Relu"}   {"layer": "Erf"}   {"layer": "Identity"}
    {"layer": "AvgPool", "window": [2, 2], "stride": [2, 2], "padding": "VALID"}
    {"layer": "GlobalAvgPool"}   {"layer": "Flatten"}

A missing ``b_std`` means 0, a missing ``W_std`` 1, a missing ``parameterization`` ``ntk``.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from ntklab.arch.core import Layer, Spec
from ntklab.arch.elementwise import Erf, Identity, Relu
from ntklab.arch.linear import Conv, Dense
from ntklab.arch.pooling import AvgPool, Flatten, GlobalAvgPool
from ntklab.errors import ArchError

LAYER_TYPES: dict[str, type[Layer]] = {
    cls.name: cls for cls in (Dense, Conv, Relu, Erf, Identity, AvgPool, GlobalAvgPool, Flatten)
}


def _check_value(where: str, key: str, value: Any) -> None:
    if key in ("width",) and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ArchError(f"{where}: width must be an integer >= 1; got {value!r}.")
    if key == "W_std" and (not isinstance(value, (int, float)) or value < 0):
        raise ArchError(f"{where}: W_std must be a number >= 0; got {value!r}.")
    if key == "b_std" and value is not None and (not isinstance(value, (int, float)) or value < 0):
        raise ArchError(f"{where}: b_std must be a number >= 0; got {value!r}.")
    if key == "parameterization" and value not in ("ntk", "standard"):
        raise ArchError(f"{where}: parameterization must be 'ntk' or 'standard'; got {value!r}.")
    if key == "padding" and value not in ("SAME", "VALID"):
        raise ArchError(f"{where}: padding must be 'SAME' or 'VALID'; got {value!r}.")


def layer_from_dict(d: Mapping[str, Any], index: int = 0) -> Layer:
    """Build one layer from its dictionary; errors name the layer index and the key."""
    where = f"layer {index}"
    if not isinstance(d, Mapping) or "layer" not in d:
        raise ArchError(
            f"{where} must be a table with a 'layer' key (one of {sorted(LAYER_TYPES)}); got {d!r}."
        )
    kind = d["layer"]
    if kind not in LAYER_TYPES:
        close = difflib.get_close_matches(str(kind), list(LAYER_TYPES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ArchError(f"{where}: unknown layer {kind!r}{hint}; allowed: {', '.join(sorted(LAYER_TYPES))}.")
    cls = LAYER_TYPES[kind]
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in d.items() if k != "layer"}
    for key, value in kwargs.items():
        if key not in fields:
            allowed = ", ".join(sorted(fields)) or "no other keys"
            raise ArchError(f"{where} ({kind}): unknown key {key!r}; allowed: {allowed}.")
        _check_value(f"{where} ({kind})", key, value)
    for key in ("kernel_size", "stride", "window"):
        if key in kwargs and isinstance(kwargs[key], Sequence):
            kwargs[key] = tuple(kwargs[key])
    if kind in ("Dense", "Conv") and "width" not in kwargs:
        raise ArchError(f"{where} ({kind}) needs a 'width' (number of output features or channels).")
    try:
        return cls(**kwargs)
    except ArchError as err:
        raise ArchError(f"{where} ({kind}): {err}") from None
    except (TypeError, ValueError) as err:
        raise ArchError(f"{where} ({kind}) has a value of the wrong type: {err}.") from None


def from_layers(layers: Sequence[Mapping[str, Any]]) -> Spec:
    """Build a :class:`Spec` from a list of layer dictionaries (the config format)."""
    if not layers:
        raise ArchError("an architecture needs at least one layer; got an empty list.")
    return Spec(tuple(layer_from_dict(d, i) for i, d in enumerate(layers)))
