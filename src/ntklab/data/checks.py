"""Checks on a dataset's arrays before any work: one sentence per problem, naming the array.

Every dataset, built in or the user's own ``.npz``, passes :func:`check_arrays` when it is
loaded (:func:`ntklab.data.registry.load_raw`; :func:`ntklab.data.npz.load_npz` checks a file's
arrays as stored, before they are cast to float32), so every experiment and ``ntklab explain``
stop with a :class:`~ntklab.errors.DataError` (exit status 2) instead of a traceback or a
failure deep inside a unit. Checked, in this order:

* inputs are real numbers with one row per sample, labels a 1-D integer array;
* no split is empty, x and y have as many rows, train and test samples have one shape;
* class labels are 0..C-1 with C at most :data:`MAX_CLASSES` (targets are one-hot, C wide);
* no input is NaN or infinite (the first bad row is named);
* no input lies beyond float32's range, in which every network and kernel computes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ntklab.errors import DataError

MAX_CLASSES = 10_000
FLOAT32_MAX = float(np.finfo(np.float32).max)
ROWS_PER_CHUNK = 4096  # rows scanned at a time: a bounded temporary, the first bad row found early


def check_arrays(where: str, x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray) -> int:
    """Check a dataset's train and test arrays; returns the number of classes C.

    ``where`` starts every message (e.g. ``"data file my.npz"``).
    """
    for name, a in (("x_train", x), ("x_test", xt)):
        _check_inputs_kind(where, name, a)
    for name, a in (("x_train", x), ("x_test", xt)):
        if len(a) == 0:
            raise DataError(
                f"{where}: {name} is empty (no samples); the training and the test split each need "
                "at least one sample."
            )
    if len(x) != len(y) or len(xt) != len(yt):
        raise DataError(f"{where}: x and y differ in length ({len(x)} vs {len(y)}, {len(xt)} vs {len(yt)}).")
    if x.shape[1:] != xt.shape[1:]:
        raise DataError(
            f"{where}: x_train samples {x.shape[1:]} and x_test samples {xt.shape[1:]} differ in shape."
        )
    c = max(_check_labels(where, "y_train", y), _check_labels(where, "y_test", yt))
    for name, a in (("x_train", x), ("x_test", xt)):
        _check_values(where, name, a)
    return c


def _check_inputs_kind(where: str, name: str, a: np.ndarray) -> None:
    """Real numbers (bool, integer or float), at least (N, D)."""
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_) or np.issubdtype(
        a.dtype, np.complexfloating
    ):
        raise DataError(f"{where}: {name} holds {a.dtype} values; inputs must be real numbers.")
    if a.ndim < 2 or 0 in a.shape[1:]:
        raise DataError(
            f"{where}: {name} has shape {a.shape}; inputs need one row per sample with at least one "
            "feature: (N, D), (N, C, L) or (N, C, H, W)."
        )


def _check_labels(where: str, name: str, y: np.ndarray) -> int:
    """1-D integer labels in 0..MAX_CLASSES-1; returns max + 1."""
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise DataError(
            f"{where}: {name} holds {y.dtype} values; ntklab needs integer class labels 0..C-1 "
            f"(C at most {MAX_CLASSES}) and does not fit regression targets, so store the labels as "
            "integers (e.g. y.astype(np.int64))."
        )
    if y.ndim != 1:
        raise DataError(
            f"{where}: {name} has shape {y.shape}; class labels must be a 1-D array of integers 0..C-1."
        )
    if len(y) == 0:
        return 0
    y = y.astype(np.int64, copy=False) if y.dtype == np.bool_ else y
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= MAX_CLASSES:
        row = int(np.argmax(y < 0)) if lo < 0 else int(np.argmax(y >= MAX_CLASSES))
        raise DataError(
            f"{where}: {name} row {row} holds label {int(y[row])}; class labels must be integers "
            f"0..C-1 with C at most {MAX_CLASSES} (ntklab does not fit regression targets)."
        )
    return hi + 1


def _check_values(where: str, name: str, a: np.ndarray) -> None:
    """No NaN or inf; nothing beyond float32's range (which would become inf when cast)."""
    if not np.issubdtype(a.dtype, np.floating):
        return  # bools and integers (at most 1.8e19) are finite and within float32's range
    bad = _first_row(a, lambda b: ~np.isfinite(b))
    if bad is not None:
        raise DataError(
            f"{where}: {name} row {bad} holds NaN or inf; every input must be a finite number "
            "(fix or drop that row)."
        )
    if a.dtype.itemsize > 4:
        big = _first_row(a, lambda b: np.abs(b) > FLOAT32_MAX)
        if big is not None:
            raise DataError(_range_message(where, name, a, big))


def _range_message(where: str, name: str, a: np.ndarray, row: int) -> str:
    peak = float(np.max(np.abs(a[row].astype(np.float64))))
    return (
        f"{where}: {name} row {row} holds {peak:.3g}, beyond the float32 range (±{FLOAT32_MAX:.3g}) "
        "in which ntklab computes; rescale the inputs."
    )


def _first_row(a: np.ndarray, bad: Callable[[np.ndarray], np.ndarray]) -> int | None:
    """The first row of ``a`` where ``bad(rows)`` (elementwise) holds anywhere, or None."""
    for i in range(0, len(a), ROWS_PER_CHUNK):
        block = np.asarray(a[i : i + ROWS_PER_CHUNK])
        hit = bad(block).reshape(len(block), -1).any(1)
        if hit.any():
            return i + int(np.argmax(hit))
    return None
