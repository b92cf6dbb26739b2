"""Reader for SVHN (Netzer et al., 2011) in the official cropped-digits format.

The official files ``train_32x32.mat`` and ``test_32x32.mat`` are MATLAB v5 files holding ``X``
(uint8, shape (32, 32, 3, N): height, width, RGB, image) and ``y`` (shape (N, 1), labels 1..10,
where 10 stands for the digit 0). The reader maps 10 to 0, so label = digit.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import scipy.io

from ntklab.errors import DataError

SVHN_CLASS_NAMES: tuple[str, ...] = tuple(str(d) for d in range(10))
"""Digit names, index = label (after mapping 10 to 0)."""

SVHN_TRAIN_FILE = "train_32x32.mat"
SVHN_TEST_FILE = "test_32x32.mat"
_EXPECTED = f"expected a folder with {SVHN_TRAIN_FILE} and {SVHN_TEST_FILE}"


def read_svhn_mat(file: Path, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read one official SVHN ``.mat`` file.

    Parameters
    ----------
    file : Path
        ``train_32x32.mat`` or ``test_32x32.mat`` (or ``extra_32x32.mat``).
    limit : int or None
        Keep only the first ``limit`` images (the file is still parsed whole: the MATLAB format
        stores ``X`` image-last, so no prefix of the file holds a prefix of the images).

    Returns
    -------
    x : np.ndarray, uint8, shape (N, 3, 32, 32)
        Images in torch layout (a transposed view of the file's array).
    y : np.ndarray, int64, shape (N,)
        Digits 0..9.

    Raises
    ------
    DataError
        If the file is not a MATLAB v5 file with ``X`` and ``y`` of the official shapes.
    """
    try:
        mat = scipy.io.loadmat(file, variable_names=("X", "y"))
    except NotImplementedError:
        raise DataError(
            f"SVHN file {file} is a MATLAB v7.3 (HDF5) file; expected the official MATLAB v5 "
            "file with X and y."
        ) from None
    except Exception as exc:  # noqa: BLE001 - parsing arbitrary bytes can raise anything
        raise DataError(
            f"SVHN file {file} is truncated or not a MATLAB .mat file (reading failed: {type(exc).__name__})."
        ) from None
    if "X" not in mat or "y" not in mat:
        raise DataError(f"SVHN file {file} has no arrays X and y; expected the official cropped-digits file.")
    x, y = mat["X"], mat["y"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataError(
            f"SVHN file {file} has X of shape {x.shape} and dtype {x.dtype}; "
            "expected uint8 of shape (32, 32, 3, N)."
        )
    n = x.shape[3]
    if y.dtype.kind not in "iuf" or y.size != n or y.ndim not in (1, 2):
        raise DataError(
            f"SVHN file {file} has y of shape {y.shape} and dtype {y.dtype}; "
            f"expected {n} labels of shape ({n}, 1)."
        )
    y = y.reshape(n)
    if limit is not None:
        x, y = x[..., :limit], y[:limit]
    labels = y.astype(np.int64)
    if len(y) and (np.any(labels != y) or labels.min() < 1 or labels.max() > 10):
        raise DataError(
            f"SVHN file {file} has labels outside the integers 1..10; expected 1..10 with 10 for the digit 0."
        )
    labels[labels == 10] = 0
    return x.transpose(3, 2, 0, 1), labels


def read_svhn(
    path: str | os.PathLike[str], n_train: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read the SVHN train and test files from a folder.

    Parameters
    ----------
    path : str or path-like
        Folder holding ``train_32x32.mat`` and ``test_32x32.mat``.
    n_train : int or None
        Keep only the first ``n_train`` training images; None keeps all.

    Returns
    -------
    x_train, y_train, x_test, y_test : np.ndarray
        uint8 images of shape (N, 3, 32, 32) and int64 digits 0..9.

    Raises
    ------
    DataError
        If a file is missing or malformed.
    """
    folder = Path(path).expanduser()
    train, test = folder / SVHN_TRAIN_FILE, folder / SVHN_TEST_FILE
    if not train.is_file() and not test.is_file():
        raise DataError(f"no SVHN files found at {folder}; {_EXPECTED}.")
    for file in (train, test):
        if not file.is_file():
            raise DataError(f"SVHN file {file} is missing; {_EXPECTED}.")
    x_train, y_train = read_svhn_mat(train, n_train)
    x_test, y_test = read_svhn_mat(test)
    return x_train, y_train, x_test, y_test
