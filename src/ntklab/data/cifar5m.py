"""Reader for CIFAR-5m (``part*.npz``), reading only the rows it needs.

It returns uint8 images in torch layout (N, 3, 32, 32) and int64 labels; turning them into
float32 and a :class:`~ntklab.data.raw.RawDataset` is the job of :mod:`ntklab.data.images`.

CIFAR-5m (Nakkiran et al., 2021) is a folder of ``part0.npz`` ... ``part5.npz``, each holding
``X`` (uint8, shape (N, 32, 32, 3)) and ``Y`` (N integer labels). Only the rows that are needed
are read from each ``.npy`` member of the zip archive: a stored (uncompressed) member is read by
seeking straight to the rows, a compressed one is decompressed only up to them.
"""

from __future__ import annotations

import math
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ntklab.errors import DataError
from ntklab.npy_header import read_npy_header

_PART_RE = re.compile(r"part(\d+)\.npz")
_NPZ_ERRORS = (zipfile.BadZipFile, OSError, EOFError, zlib.error, ValueError, KeyError)
TAKE_CHUNK_BYTES = 64 * 2**20  # a compressed part is decompressed this many bytes of rows at a time


def _npy_header(f: Any, label: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """Read the header of an ``.npy`` stream; return (shape, dtype, data offset)."""
    try:
        shape, fortran, dtype = read_npy_header(f)
    except ValueError as exc:
        raise DataError(f"CIFAR-5m array {label} uses {exc}.") from None
    if fortran and len(shape) > 1:
        raise DataError(f"CIFAR-5m array {label} is stored in Fortran order; expected C order.")
    if dtype.hasobject:
        raise DataError(f"CIFAR-5m array {label} holds Python objects; expected numbers.")
    return tuple(shape), dtype, f.tell()


class Cifar5mPart:
    """Row-range access to the ``X`` and ``Y`` members of one CIFAR-5m part."""

    def __init__(self, file: Path) -> None:
        self.file = file
        try:
            with zipfile.ZipFile(file) as zf:
                self.x_shape, self.x_dtype, _ = self._header(zf, "X")
                self.y_shape, self.y_dtype, _ = self._header(zf, "Y")
        except _NPZ_ERRORS:
            raise DataError(
                f"CIFAR-5m file {file} is truncated or not an .npz with arrays X and Y."
            ) from None
        if self.x_dtype != np.uint8 or self.x_shape[1:] != (32, 32, 3):
            raise DataError(
                f"CIFAR-5m file {file} has X of shape {self.x_shape} and dtype {self.x_dtype}; "
                "expected uint8 of shape (N, 32, 32, 3)."
            )
        if self.y_dtype.kind not in "iu" or self.y_shape != self.x_shape[:1]:
            raise DataError(
                f"CIFAR-5m file {file} has Y of shape {self.y_shape} and dtype {self.y_dtype}; "
                f"expected {self.x_shape[0]} integer labels, one per image."
            )

    def _header(self, zf: zipfile.ZipFile, key: str) -> tuple[tuple[int, ...], np.dtype, int]:
        with zf.open(f"{key}.npy") as f:
            return _npy_header(f, f"{key} in {self.file}")

    def __len__(self) -> int:
        return self.x_shape[0]

    def rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Read rows ``start:stop`` of X (as NCHW uint8) and Y (as int64)."""
        try:
            with zipfile.ZipFile(self.file) as zf:
                x = self._read(zf, "X", start, stop)
                y = self._read(zf, "Y", start, stop)
        except _NPZ_ERRORS:
            raise DataError(f"CIFAR-5m file {self.file} is truncated or corrupt.") from None
        return x.transpose(0, 3, 1, 2), self._checked(y)

    def labels(self, stop: int) -> np.ndarray:
        """Y[:stop] as int64 (the labels alone: a few MB for a part of a million images)."""
        try:
            with zipfile.ZipFile(self.file) as zf:
                y = self._read(zf, "Y", 0, stop)
        except _NPZ_ERRORS:
            raise DataError(f"CIFAR-5m file {self.file} is truncated or corrupt.") from None
        return self._checked(y)

    def take(self, idx: np.ndarray) -> np.ndarray:
        """X[idx] (as NCHW uint8) for sorted row indices ``idx``: a stored member is read at those
        rows only, a compressed one is decompressed in chunks up to the last of them."""
        try:
            with zipfile.ZipFile(self.file) as zf:
                x = self._take(zf, "X", idx)
        except _NPZ_ERRORS:
            raise DataError(f"CIFAR-5m file {self.file} is truncated or corrupt.") from None
        return x.transpose(0, 3, 1, 2)

    def _checked(self, y: np.ndarray) -> np.ndarray:
        y = y.astype(np.int64)
        if len(y) and (y.min() < 0 or y.max() > 9):
            raise DataError(
                f"CIFAR-5m file {self.file} has labels in {y.min()}..{y.max()}; expected labels in 0..9."
            )
        return y

    def _take(self, zf: zipfile.ZipFile, key: str, idx: np.ndarray) -> np.ndarray:
        info = zf.getinfo(f"{key}.npy")
        with zf.open(info) as f:
            shape, dtype, offset = _npy_header(f, f"{key} in {self.file}")
            out = np.empty((len(idx), *shape[1:]), dtype=dtype)
            if len(idx) == 0:
                return out
            if info.compress_type == zipfile.ZIP_STORED:
                data_start = _stored_data_start(self.file, info) + offset
                array = np.memmap(self.file, dtype, mode="r", offset=data_start, shape=shape)
                out[:] = array[idx]
                return out
            row_bytes = math.prod(shape[1:]) * dtype.itemsize
            chunk = max(1, TAKE_CHUNK_BYTES // row_bytes)
            f.seek(offset)
            done = 0
            for start in range(0, int(idx[-1]) + 1, chunk):
                stop = min(start + chunk, int(idx[-1]) + 1)
                buf = f.read((stop - start) * row_bytes)
                if len(buf) != (stop - start) * row_bytes:
                    raise EOFError
                rows = np.frombuffer(buf, dtype=dtype).reshape((stop - start, *shape[1:]))
                hit = idx[done : np.searchsorted(idx, stop)]
                out[done : done + len(hit)] = rows[hit - start]
                done += len(hit)
        return out

    def _read(self, zf: zipfile.ZipFile, key: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of one member: memory-mapped if stored, else streamed."""
        info = zf.getinfo(f"{key}.npy")
        with zf.open(info) as f:
            shape, dtype, offset = _npy_header(f, f"{key} in {self.file}")
            if info.compress_type == zipfile.ZIP_STORED:
                # The member's bytes lie in the file as they are: map them and copy the rows.
                data_start = _stored_data_start(self.file, info) + offset
                array = np.memmap(self.file, dtype, mode="r", offset=data_start, shape=shape)
                return np.array(array[start:stop])
            row_bytes = math.prod(shape[1:]) * dtype.itemsize
            f.seek(offset + start * row_bytes)  # decompresses up to the rows, not beyond
            want = (stop - start) * row_bytes
            buf = f.read(want)
        if len(buf) != want:
            raise EOFError
        return np.frombuffer(buf, dtype=dtype).reshape((stop - start, *shape[1:]))


def _stored_data_start(file: Path, info: zipfile.ZipInfo) -> int:
    """Offset in ``file`` of the first byte of a stored (uncompressed) zip member."""
    with open(file, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)  # fixed part of the local file header
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _cifar5m_parts(folder: Path) -> list[Path]:
    """The ``part{k}.npz`` files of a CIFAR-5m folder, checked to run 0, 1, ... without gaps."""
    expected = "expected a folder with part0.npz ... part5.npz of CIFAR-5m"
    if not folder.is_dir():
        raise DataError(f"no CIFAR-5m parts found at {folder}; {expected}.")
    found = {}
    for file in folder.iterdir():
        match = _PART_RE.fullmatch(file.name)
        if match and file.is_file():
            found[int(match.group(1))] = file
    if not found:
        raise DataError(f"no CIFAR-5m parts found at {folder}; {expected}.")
    for k in range(max(found) + 1):
        if k not in found:
            raise DataError(
                f"CIFAR-5m file {folder / f'part{k}.npz'} is missing while "
                f"part{max(found)}.npz is present; {expected}."
            )
    return [found[k] for k in sorted(found)]


def read_cifar5m(
    path: str | os.PathLike[str],
    n_train: int | None = None,
    n_test: int = 10000,
    classes: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read CIFAR-5m from its ``part*.npz`` files.

    The test set is the **last** ``n_test`` images of the last part; the training pool is every
    other image, parts in order (so the two never overlap, and the test set does not move when
    ``n_train`` changes). Only the parts needed for ``n_train`` are opened, plus the last part
    for the test set, and from each only the needed rows are read.

    With ``classes``, the training pool is the images whose label is one of ``classes``, in
    the same order, and ``n_train`` counts those: parts are streamed one by one (first their
    labels, a few MB, then only the rows of the chosen classes) until ``n_train`` of them are
    found, so a class subset of the 6-million-image set reads no more parts than it needs.

    Parameters
    ----------
    path : str or path-like
        Folder holding ``part0.npz`` ... ``part5.npz`` (any number of parts from ``part0``).
    n_train : int or None
        Number of training images to read (fewer if the pool is smaller: the caller checks);
        None reads the whole pool, which for the full dataset is about 15 GB of uint8.
    n_test : int
        Number of test images, at most the size of the last part (never filtered by class).
    classes : sequence of int, optional
        Labels to keep in the training pool (None: all).

    Returns
    -------
    x_train : np.ndarray, uint8, shape (N, 3, 32, 32)
    y_train : np.ndarray, int64, shape (N,)
    x_test : np.ndarray, uint8, shape (n_test, 3, 32, 32)
    y_test : np.ndarray, int64, shape (n_test,)

    Raises
    ------
    DataError
        If parts are missing, truncated or malformed, or the last part has fewer than
        ``n_test`` images.
    """
    folder = Path(path).expanduser()
    files = _cifar5m_parts(folder)
    last = Cifar5mPart(files[-1])
    if n_test > len(last):
        raise DataError(
            f"CIFAR-5m file {last.file} holds {len(last)} images, fewer than n_test={n_test} "
            "(the test set is the tail of the last part)."
        )
    x_test, y_test = last.rows(len(last) - n_test, len(last))
    wanted = None if classes is None else np.asarray(sorted(set(int(c) for c in classes)), dtype=np.int64)

    xs, ys = [], []
    have = 0
    for i, file in enumerate(files):
        if n_train is not None and have >= n_train:
            break
        part = last if i == len(files) - 1 else Cifar5mPart(file)
        stop = len(part) - n_test if part is last else len(part)
        if wanted is None:
            if n_train is not None:
                stop = min(stop, n_train - have)
            x, y = part.rows(0, stop)
        else:
            y = part.labels(stop)
            idx = np.flatnonzero(np.isin(y, wanted))
            if n_train is not None:
                idx = idx[: n_train - have]
            x, y = part.take(idx), y[idx]
        xs.append(x)
        ys.append(y)
        have += len(y)
    return np.concatenate(xs), np.concatenate(ys), x_test, y_test
