"""Reader for the IDX format of MNIST (LeCun et al., 1998) and Fashion-MNIST (Xiao et al., 2017).

An IDX file is a big-endian header followed by the raw array in row-major order: two zero bytes,
a type byte (0x08 = unsigned byte), a byte with the number of dimensions ``d``, then ``d``
big-endian uint32 sizes. As a single big-endian int32 the first four bytes read 2051 for the
image files (uint8, 3 dims: N, 28, 28) and 2049 for the label files (uint8, 1 dim: N). Files may
be gzipped (detected from their first bytes, whatever their name).
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ntklab.errors import DataError

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049

MNIST_CLASS_NAMES: tuple[str, ...] = tuple(str(d) for d in range(10))
FASHION_MNIST_CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_KIND = {IDX_IMAGES_MAGIC: "images", IDX_LABELS_MAGIC: "labels"}
_IO_ERRORS = (OSError, EOFError, zlib.error)  # gzip.BadGzipFile is an OSError


def _open(file: Path) -> BinaryIO:
    """Open a plain or gzipped file for binary reading."""
    with open(file, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    return gzip.open(file, "rb") if gzipped else open(file, "rb")


def _read_exact(f: BinaryIO, n: int, file: Path, what: str) -> bytes:
    buf = f.read(n)
    if len(buf) != n:
        raise DataError(f"IDX file {file} is truncated: it ends inside the {what}.")
    return buf


def read_idx(
    file: str | os.PathLike[str], expected_magic: int, limit: int | None = None
) -> tuple[np.ndarray, int]:
    """Read a uint8 IDX file, or its first ``limit`` items.

    Parameters
    ----------
    file : str or path-like
        The IDX file, plain or gzipped.
    expected_magic : int
        2051 for images, 2049 for labels (any uint8 IDX magic ``0x08nn`` works).
    limit : int or None
        Read only the first ``limit`` items along the first axis (the rest of the file is not
        read); None reads all and checks that nothing follows.

    Returns
    -------
    array : np.ndarray, uint8, shape (min(N, limit), *dims[1:])
    n_total : int
        The number of items ``N`` the header announces.

    Raises
    ------
    DataError
        If the file is unreadable, has another magic number, or is truncated.
    """
    file = Path(file)
    try:
        with _open(file) as f:
            header = _read_exact(f, 4, file, "header")
            magic = int.from_bytes(header, "big")
            if magic != expected_magic:
                kind = _KIND.get(magic, "not an IDX uint8 file")
                raise DataError(
                    f"IDX file {file} has magic number {magic} ({kind}); expected "
                    f"{expected_magic} ({_KIND.get(expected_magic, 'IDX uint8')})."
                )
            ndim = header[3]
            dims = tuple(int(d) for d in np.frombuffer(_read_exact(f, 4 * ndim, file, "header"), ">u4"))
            n_total = dims[0]
            n = n_total if limit is None else min(n_total, limit)
            item = int(np.prod(dims[1:], dtype=np.int64))
            data = _read_exact(f, n * item, file, "data")
            if limit is None and f.read(1):
                raise DataError(
                    f"IDX file {file} is longer than its header {dims} announces; "
                    "it is corrupt or not an IDX file."
                )
    except _IO_ERRORS as exc:
        raise DataError(
            f"IDX file {file} cannot be read: it is truncated or corrupt ({type(exc).__name__})."
        ) from None
    return np.frombuffer(data, dtype=np.uint8).reshape((n, *dims[1:])), n_total


def find_idx_files(path: str | os.PathLike[str], dataset: str, subfolder: str) -> list[Path]:
    """Locate the four IDX files of MNIST or Fashion-MNIST.

    Parameters
    ----------
    path : str or path-like
        Folder holding the files; its ``raw/`` and ``<subfolder>/raw/`` (torchvision's layout)
        are searched too. Each file may be plain or end in ``.gz``.
    dataset : str
        Name for messages (``"MNIST"``).
    subfolder : str
        torchvision's folder name (``"MNIST"``, ``"FashionMNIST"``).

    Returns
    -------
    list of Path
        Train images, train labels, test images, test labels.

    Raises
    ------
    DataError
        If no folder holds the files or one of them is missing.
    """
    root = Path(path).expanduser()
    expected = f"expected a folder with {', '.join(IDX_FILES[:3])} and {IDX_FILES[3]} (each optionally .gz)"

    def find(folder: Path, name: str) -> Path | None:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
        return None

    for folder in (root, root / "raw", root / subfolder / "raw"):
        found = [find(folder, name) for name in IDX_FILES]
        if any(f is not None for f in found):
            for name, f in zip(IDX_FILES, found, strict=True):
                if f is None:
                    raise DataError(f"{dataset} file {folder / name} is missing; {expected}.")
            return [f for f in found if f is not None]
    raise DataError(f"no {dataset} files found at {root}; {expected}.")


def read_idx_dataset(
    path: str | os.PathLike[str],
    n_train: int | None = None,
    *,
    dataset: str = "MNIST",
    subfolder: str = "MNIST",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read the train and test sets of MNIST or Fashion-MNIST.

    Parameters
    ----------
    path : str or path-like
        See :func:`find_idx_files`.
    n_train : int or None
        Read only the first ``n_train`` training images and labels; None reads all.
    dataset, subfolder : str
        See :func:`find_idx_files`.

    Returns
    -------
    x_train : np.ndarray, uint8, shape (N, 1, 28, 28)
    y_train : np.ndarray, int64, shape (N,)
    x_test : np.ndarray, uint8, shape (M, 1, 28, 28)
    y_test : np.ndarray, int64, shape (M,)

    Raises
    ------
    DataError
        If a file is missing or malformed, image and label counts differ, images are not
        28x28, or labels are outside 0..9.
    """
    train_x, train_y, test_x, test_y = find_idx_files(path, dataset, subfolder)
    out = []
    for fx, fy, limit in ((train_x, train_y, n_train), (test_x, test_y, None)):
        x, nx = read_idx(fx, IDX_IMAGES_MAGIC, limit)
        y, ny = read_idx(fy, IDX_LABELS_MAGIC, limit)
        if x.shape[1:] != (28, 28):
            raise DataError(f"{dataset} file {fx} holds images of size {x.shape[1:]}; expected (28, 28).")
        if y.ndim != 1 or nx != ny:
            raise DataError(
                f"{dataset} file {fy} holds labels of shape {(ny, *y.shape[1:])}, which does "
                f"not match the {nx} images in {fx.name}."
            )
        if len(y) and y.max() > 9:
            raise DataError(f"{dataset} file {fy} has labels up to {y.max()}; expected 0..9.")
        out += [x[:, None], y.astype(np.int64)]
    return out[0], out[1], out[2], out[3]
