"""A data-only encoding of unit results: JSON for the structure, ``.npy`` for the arrays.

Unit results are nested dicts, lists and tuples of ``None``, bools, ints, floats, strings,
NumPy arrays and scalars (and torch tensors, stored as arrays). They are stored without pickle,
so reading an entry can never run code: the structure is JSON, every array a standard ``.npy``
blob read with ``allow_pickle=False``.

Layout of an encoded value (the payload of a store entry)::

    u64 manifest length | manifest (UTF-8 JSON) | .npy blob 0 | .npy blob 1 | ...

The manifest is ``{"format": 1, "value": TREE, "arrays": [[offset, length], ...]}`` (offsets
from the end of the manifest). In TREE, JSON values stand for themselves and single-key
objects whose key starts with ``$`` are tags:

* ``{"$a": i}`` array i, ``{"$s": i}`` a NumPy scalar (array i is 0-d), ``{"$t": i}`` a torch
  tensor (array i, on the CPU);
* ``{"$f": "nan" | "inf" | "-inf"}`` a non-finite Python float (JSON has none);
* ``{"$tuple": [...]}`` a tuple; ``{"$dict": [[key, value], ...]}`` a dict whose keys are not
  all strings, or that has a key starting with ``$`` (other dicts are plain JSON objects).

Decoding rebuilds exactly the types it was given (a tuple stays a tuple, an ``int`` key an
``int``, ``np.float64`` a NumPy scalar), so analyses see the same values as before storage.
"""

from __future__ import annotations

import io
import json
import math
import struct
from typing import Any

import numpy as np

from ntklab.npy_header import read_npy_header

FORMAT = 1
_LEN = struct.Struct("<Q")


class DecodeError(ValueError):
    """The bytes are not a valid encoding (truncated, altered, or not written by ntklab)."""


def encode(value: Any) -> list[bytes]:
    """The payload of ``value`` as a list of byte chunks (concatenate to get the payload).

    Raises ``TypeError`` for anything outside the data types listed in the module docstring
    (objects, arrays of Python objects, bytes, ...): such a result cannot be stored safely.
    """
    blobs: list[bytes] = []
    tree = _to_tree(value, blobs)
    spans, pos = [], 0
    for b in blobs:
        spans.append([pos, len(b)])
        pos += len(b)
    manifest = json.dumps(
        {"format": FORMAT, "value": tree, "arrays": spans}, allow_nan=False, separators=(",", ":")
    ).encode()
    return [_LEN.pack(len(manifest)), manifest, *blobs]


def _array_blob(a: np.ndarray) -> bytes:
    if a.dtype.hasobject:
        raise TypeError(f"a unit result may not hold arrays of Python objects (dtype {a.dtype})")
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(a), allow_pickle=False)
    return buf.getvalue()


def _to_tree(obj: Any, blobs: list[bytes]) -> Any:
    """The JSON tree of ``obj``, appending its arrays' ``.npy`` blobs to ``blobs``."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, np.generic):  # before int/float: np.float64 is a float
        blobs.append(_array_blob(np.asarray(obj)))
        return {"$s": len(blobs) - 1}
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else {"$f": repr(float(obj))}
    if isinstance(obj, np.ndarray):
        blobs.append(_array_blob(obj))
        return {"$a": len(blobs) - 1}
    if _is_tensor(obj):
        blobs.append(_array_blob(obj.detach().cpu().numpy()))
        return {"$t": len(blobs) - 1}
    if isinstance(obj, list):
        return [_to_tree(v, blobs) for v in obj]
    if isinstance(obj, tuple):
        return {"$tuple": [_to_tree(v, blobs) for v in obj]}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: _to_tree(v, blobs) for k, v in obj.items()}
        return {"$dict": [[_to_tree(k, blobs), _to_tree(v, blobs)] for k, v in obj.items()]}
    raise TypeError(
        f"a unit result may hold only dicts, lists, tuples, None, bools, numbers, strings and arrays; "
        f"got {type(obj).__module__}.{type(obj).__qualname__}"
    )


def _is_tensor(obj: Any) -> bool:
    mod = type(obj).__module__
    if not mod.startswith("torch"):
        return False
    import torch

    return isinstance(obj, torch.Tensor)


def decode(payload: bytes | memoryview) -> Any:
    """The value of an encoded payload; :class:`DecodeError` if it is not a valid encoding.

    Nothing in the payload is executed or trusted: the manifest is plain JSON, every array's
    header is checked against the bytes it claims before any memory is allocated for it.
    """
    data = memoryview(payload).cast("B")
    try:
        (n,) = _LEN.unpack_from(data)
        if _LEN.size + n > len(data):
            raise DecodeError("the manifest runs past the end")
        manifest = json.loads(bytes(data[_LEN.size : _LEN.size + n]).decode())
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise DecodeError("unknown manifest format")
        blobs = data[_LEN.size + n :]
        arrays = [_read_array(blobs, span) for span in manifest["arrays"]]
        return _from_tree(manifest["value"], arrays)
    except DecodeError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, struct.error, RecursionError) as exc:
        raise DecodeError(f"{type(exc).__name__}: {exc}") from exc


def _read_array(blobs: memoryview, span: Any) -> np.ndarray:
    """The array of the ``.npy`` blob at ``span`` = [offset, length] (a copy that owns its data)."""
    if not (isinstance(span, list) and len(span) == 2 and all(type(v) is int and v >= 0 for v in span)):
        raise DecodeError(f"bad array span {span!r}")
    offset, length = span
    if offset + length > len(blobs):
        raise DecodeError("an array lies outside the payload")
    f = io.BytesIO(blobs[offset : offset + length])
    try:
        shape, fortran, dtype = read_npy_header(f)
    except ValueError as exc:
        raise DecodeError(f"unsupported array: {exc}") from None
    if dtype.hasobject:
        raise DecodeError("an array of Python objects")
    count = math.prod(shape)
    if f.tell() + count * dtype.itemsize != length:
        raise DecodeError("an array's size does not match its header")
    flat = np.frombuffer(blobs, dtype=dtype, count=count, offset=offset + f.tell())
    return flat.reshape(shape, order="F" if fortran else "C").copy(order="K")


_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _from_tree(t: Any, arrays: list[np.ndarray]) -> Any:
    if t is None or isinstance(t, (bool, int, float, str)):
        return t
    if isinstance(t, list):
        return [_from_tree(v, arrays) for v in t]
    if not isinstance(t, dict):
        raise DecodeError(f"unexpected JSON value of type {type(t).__name__}")
    if len(t) == 1:
        ((tag, v),) = t.items()
        if tag == "$a":
            return arrays[_index(v, arrays)]
        if tag == "$s":
            a = arrays[_index(v, arrays)]
            if a.ndim != 0:
                raise DecodeError("a scalar is not stored as a 0-d array")
            return a[()]
        if tag == "$t":
            import torch

            return torch.from_numpy(arrays[_index(v, arrays)])
        if tag == "$f":
            if v not in _FLOATS:
                raise DecodeError(f"unknown float {v!r}")
            return _FLOATS[v]
        if tag == "$tuple":
            if not isinstance(v, list):
                raise DecodeError("a tuple is not a list")
            return tuple(_from_tree(x, arrays) for x in v)
        if tag == "$dict":
            if not isinstance(v, list) or not all(isinstance(p, list) and len(p) == 2 for p in v):
                raise DecodeError("a dict is not a list of pairs")
            return {_from_tree(k, arrays): _from_tree(x, arrays) for k, x in v}
    if any(k.startswith("$") for k in t):
        raise DecodeError(f"unknown tag in {sorted(t)[:3]}")
    return {k: _from_tree(v, arrays) for k, v in t.items()}


def _index(v: Any, arrays: list[np.ndarray]) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < len(arrays):
        raise DecodeError(f"array index {v!r} out of range")
    return v
