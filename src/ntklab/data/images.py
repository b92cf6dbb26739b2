"""Loaders for real image datasets in their official on-disk formats.

Every loader takes the path where the user keeps the files (nothing is ever downloaded), an
optional ``n_train`` (load only the first ``n_train`` training images, reading no more of the
files than the format allows; None = all), and returns a :class:`~ntklab.data.raw.RawDataset`
with images as float32 in torch layout (N, C, H, W), the raw 0..255 values divided by 255, and
int64 labels. The format parsers live in :mod:`ntklab.data.cifar10`, :mod:`ntklab.data.cifar5m`,
:mod:`ntklab.data.svhn` and :mod:`ntklab.data.idx`; this module checks the arguments and
assembles the result.

Loaders (registry name, x shape, files):

- ``load_cifar10``: ``cifar10``, (N, 3, 32, 32), ``cifar-10-batches-py/`` or its ``.tar.gz``;
- ``load_cifar5m``: ``cifar5m``, (N, 3, 32, 32), ``part0.npz`` ... ``part5.npz``;
- ``load_svhn``: ``svhn``, (N, 3, 32, 32), ``train_32x32.mat`` and ``test_32x32.mat``;
- ``load_mnist``: ``mnist``, (N, 1, 28, 28), IDX ``train-images-idx3-ubyte`` ... (or ``.gz``);
- ``load_fashion_mnist``: ``fashion_mnist``, (N, 1, 28, 28), same IDX file names as MNIST.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Sequence

import numpy as np

from ntklab.data.cifar5m import read_cifar5m
from ntklab.data.cifar10 import CIFAR10_CLASS_NAMES, read_cifar10
from ntklab.data.idx import (
    FASHION_MNIST_CLASS_NAMES,
    MNIST_CLASS_NAMES,
    read_idx_dataset,
)
from ntklab.data.raw import RawDataset
from ntklab.data.svhn import SVHN_CLASS_NAMES, read_svhn
from ntklab.errors import ConfigError, DataError

__all__ = [
    "load_cifar5m",
    "load_cifar10",
    "load_fashion_mnist",
    "load_mnist",
    "load_svhn",
]

PathLike = str | os.PathLike[str]


def _positive_count(value: int | None, what: str) -> int | None:
    """Check that ``value`` is None or a positive integer (bool rejected)."""
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise TypeError
        count = operator.index(value)
    except TypeError:
        raise ConfigError(f"{what} must be a positive integer or None; got {value!r}.") from None
    if count < 1:
        raise ConfigError(f"{what} must be a positive integer or None; got {count}.")
    return count


def _to_float(x: np.ndarray) -> np.ndarray:
    """uint8 images -> C-contiguous float32 of the values divided by 255."""
    out = np.empty(x.shape, dtype=np.float32)
    np.divide(x, np.float32(255.0), out=out, dtype=np.float32)
    return out


def _assemble(
    name: str,
    where: PathLike,
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    n_train: int | None,
    class_names: tuple[str, ...],
) -> RawDataset:
    """Slice the training pool to ``n_train``, convert to float32 and build the dataset."""
    x_train, y_train, x_test, y_test = arrays
    if n_train is not None:
        if len(y_train) < n_train:
            raise DataError(
                f"{name} at {where} holds only {len(y_train)} training images, fewer than n_train={n_train}."
            )
        x_train, y_train = x_train[:n_train], y_train[:n_train]
    return RawDataset(
        name=name,
        x_train=_to_float(x_train),
        y_train=np.ascontiguousarray(y_train, dtype=np.int64),
        x_test=_to_float(x_test),
        y_test=np.ascontiguousarray(y_test, dtype=np.int64),
        num_classes=len(class_names),
        class_names=class_names,
    )


def load_cifar10(path: PathLike, n_train: int | None = None) -> RawDataset:
    """Load CIFAR-10 from the official python-format batches.

    Parameters
    ----------
    path : str or path-like
        The ``cifar-10-batches-py`` folder, a folder containing it (or containing
        ``cifar-10-python.tar.gz``), or the unextracted ``cifar-10-python.tar.gz``, whose
        members are read without extracting to disk.
    n_train : int or None
        Number of training images; batches ``data_batch_1``, ``data_batch_2``, ... are read in
        order only until enough are loaded. None loads all 50,000.

    Returns
    -------
    RawDataset
        ``name="cifar10"``; x float32 (N, 3, 32, 32) with values in [0, 1]; train = data batches
        1..5 concatenated in order, test = ``test_batch``; class names from ``batches.meta``.

    Raises
    ------
    DataError
        If the files are missing, truncated, of another kind or malformed, or hold fewer than
        ``n_train`` training images.
    ConfigError
        If ``n_train`` is not a positive integer or None.
    """
    n = _positive_count(n_train, "n_train")
    x_train, y_train, x_test, y_test, names = read_cifar10(path, n)
    return _assemble("cifar10", path, (x_train, y_train, x_test, y_test), n, names)


def load_cifar5m(
    path: PathLike,
    n_train: int | None = None,
    n_test: int = 10000,
    classes: Sequence[int] | None = None,
) -> RawDataset:
    """Load CIFAR-5m from its ``part*.npz`` files.

    Parameters
    ----------
    path : str or path-like
        Folder holding ``part0.npz`` ... ``part5.npz``, each with ``X`` uint8 (N, 32, 32, 3)
        and ``Y`` (N,) labels.
    n_train : int or None
        Number of training images, taken from the parts in order; only the parts (and rows)
        needed are read. None loads the whole pool (about 6 million images: 70+ GB as float32).
    n_test : int
        Number of test images. **Choice:** the test set is the last ``n_test`` images of the last
        part, and the training pool excludes them, so train and test never overlap and the test
        set is the same whatever ``n_train``.
    classes : sequence of int, optional
        Keep only training images with these labels; ``n_train`` then counts them, and parts
        are streamed only until that many are found (the test set is not filtered here).

    Returns
    -------
    RawDataset
        ``name="cifar5m"``; x float32 (N, 3, 32, 32) in [0, 1]; CIFAR-10 class names.

    Raises
    ------
    DataError
        If parts are missing or malformed, or hold too few images.
    ConfigError
        If ``n_train`` or ``n_test`` is not a positive integer.
    """
    n = _positive_count(n_train, "n_train")
    n_te = _positive_count(n_test, "n_test")
    if n_te is None:
        raise ConfigError("n_test must be a positive integer; got None.")
    arrays = read_cifar5m(path, n, n_te, classes)
    where = path if classes is None else f"{path} (classes {sorted(set(classes))})"
    return _assemble("cifar5m", where, arrays, n, CIFAR10_CLASS_NAMES)


def load_svhn(path: PathLike, n_train: int | None = None) -> RawDataset:
    """Load SVHN (cropped digits) from the official MATLAB files.

    Parameters
    ----------
    path : str or path-like
        Folder holding ``train_32x32.mat`` and ``test_32x32.mat`` (``extra_32x32.mat`` is not
        used).
    n_train : int or None
        Number of training images (the first ones of the file); None loads all 73,257.

    Returns
    -------
    RawDataset
        ``name="svhn"``; x float32 (N, 3, 32, 32) in [0, 1]; labels are digits 0..9 (the
        files' label 10 is mapped to 0); class names ``"0"`` ... ``"9"``.

    Raises
    ------
    DataError
        If a file is missing or malformed, or holds fewer than ``n_train`` images.
    ConfigError
        If ``n_train`` is not a positive integer or None.
    """
    n = _positive_count(n_train, "n_train")
    return _assemble("svhn", path, read_svhn(path, n), n, SVHN_CLASS_NAMES)


def load_mnist(path: PathLike, n_train: int | None = None) -> RawDataset:
    """Load MNIST from its IDX files.

    Parameters
    ----------
    path : str or path-like
        Folder holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each optionally gzipped
        (``.gz``); ``raw/`` and ``MNIST/raw/`` below it (torchvision's layout) are searched too.
    n_train : int or None
        Number of training images; only that much of the training files is read. None loads
        all 60,000.

    Returns
    -------
    RawDataset
        ``name="mnist"``; x float32 (N, 1, 28, 28) in [0, 1] (one grayscale channel; callers may
        repeat it); class names ``"0"`` ... ``"9"``.

    Raises
    ------
    DataError
        If a file is missing or malformed, or holds fewer than ``n_train`` images.
    ConfigError
        If ``n_train`` is not a positive integer or None.
    """
    n = _positive_count(n_train, "n_train")
    arrays = read_idx_dataset(path, n, dataset="MNIST", subfolder="MNIST")
    return _assemble("mnist", path, arrays, n, MNIST_CLASS_NAMES)


def load_fashion_mnist(path: PathLike, n_train: int | None = None) -> RawDataset:
    """Load Fashion-MNIST from its IDX files.

    Parameters
    ----------
    path : str or path-like
        Folder holding the four IDX files, named as for MNIST and optionally gzipped;
        ``raw/`` and ``FashionMNIST/raw/`` below it are searched too.
    n_train : int or None
        Number of training images; only that much of the training files is read. None loads
        all 60,000.

    Returns
    -------
    RawDataset
        ``name="fashion_mnist"``; x float32 (N, 1, 28, 28) in [0, 1]; the ten official class
        names (``"T-shirt/top"`` ... ``"Ankle boot"``).

    Raises
    ------
    DataError
        If a file is missing or malformed, or holds fewer than ``n_train`` images.
    ConfigError
        If ``n_train`` is not a positive integer or None.
    """
    n = _positive_count(n_train, "n_train")
    arrays = read_idx_dataset(path, n, dataset="Fashion-MNIST", subfolder="FashionMNIST")
    return _assemble("fashion_mnist", path, arrays, n, FASHION_MNIST_CLASS_NAMES)
