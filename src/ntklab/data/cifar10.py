"""Reader for CIFAR-10 in the official python format (pickled batches).

It returns uint8 images in torch layout (N, 3, 32, 32) and int64 labels; turning them into
float32 and a :class:`~ntklab.data.raw.RawDataset` is the job of :mod:`ntklab.data.images`.

CIFAR-10 (Krizhevsky, 2009) ships as ``cifar-10-python.tar.gz`` holding a folder
``cifar-10-batches-py/`` with ``data_batch_1`` ... ``data_batch_5``, ``test_batch`` and
``batches.meta``. Each batch is a Python-2 pickle of a dict with ``b"data"`` (uint8, shape
(N, 3072): 1024 red, 1024 green, then 1024 blue values, each a row-major 32x32 plane) and
``b"labels"`` (N ints in 0..9). The pickles are read with a restricted unpickler that only
resolves the few numpy names an ndarray needs, so a hostile file cannot run code.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ntklab.errors import DataError

CIFAR10_CLASS_NAMES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
"""The official CIFAR-10 label names, index = label (used when ``batches.meta`` is absent)."""

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_BATCH = "test_batch"
_META = "batches.meta"
_ALL_FILES = (*_TRAIN_BATCHES, _TEST_BATCH, _META)
_EXPECTED = f"expected a folder {CIFAR10_FOLDER} with data_batch_1..5 and test_batch, or {CIFAR10_ARCHIVE}"

# The only globals a pickled dict of ndarrays, lists and bytes refers to. The official
# Python-2 files use _reconstruct, ndarray and dtype; Python-3 re-pickles also use
# _codecs.encode (bytes, protocol 2) or _frombuffer (arrays, protocol 5); numpy 2 spells
# numpy.core as numpy._core.
_ALLOWED_GLOBALS = frozenset(
    {
        ("_codecs", "encode"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
)

ReadMember = Callable[[str], bytes | None]
"""Return the bytes of one CIFAR-10 file by base name, or None when it is absent."""


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the numpy names needed to rebuild an ndarray."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return super().find_class(module, name)


def _unpickle(raw: bytes, label: str) -> dict[str, Any]:
    """Unpickle one CIFAR-10 file into a dict with str keys.

    Parameters
    ----------
    raw : bytes
        The file's content.
    label : str
        How to name the file in error messages.

    Returns
    -------
    dict
        The unpickled dict, its bytes keys decoded to str.

    Raises
    ------
    DataError
        If the bytes are not a complete pickle of a dict.
    """
    try:
        obj = _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - unpickling arbitrary bytes can raise anything
        raise DataError(
            f"CIFAR-10 file {label} is truncated or not a CIFAR-10 python batch "
            f"(unpickling failed: {type(exc).__name__})."
        ) from None
    if not isinstance(obj, dict):
        raise DataError(
            f"CIFAR-10 file {label} is not a CIFAR-10 python batch: it holds a "
            f"{type(obj).__name__}, not a dict."
        )
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def parse_cifar10_batch(raw: bytes, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode one CIFAR-10 data or test batch.

    Parameters
    ----------
    raw : bytes
        Content of ``data_batch_k`` or ``test_batch``.
    label : str
        How to name the file in error messages.

    Returns
    -------
    x : np.ndarray, uint8, shape (N, 3, 32, 32)
        Images, channels R, G, B.
    y : np.ndarray, int64, shape (N,)
        Labels in 0..9.

    Raises
    ------
    DataError
        If the file is truncated, of another kind, or has the wrong shapes or labels.
    """
    batch = _unpickle(raw, label)
    if "fine_labels" in batch:
        raise DataError(
            f"CIFAR-10 file {label} is a CIFAR-100 batch (it has fine_labels), not a CIFAR-10 batch."
        )
    if "data" not in batch or "labels" not in batch:
        raise DataError(
            f"CIFAR-10 file {label} is not a CIFAR-10 python batch: it has keys "
            f"{sorted(batch)}, expected data and labels."
        )
    data = batch["data"]
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == 3 * 32 * 32
    ):
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise DataError(
            f"CIFAR-10 file {label} has data of shape {shape} and type {dtype}; "
            "expected a uint8 array of shape (N, 3072)."
        )
    labels = np.asarray(batch["labels"])
    n = data.shape[0]
    if labels.shape != (n,) or (n > 0 and labels.dtype.kind not in "iu"):
        raise DataError(
            f"CIFAR-10 file {label} has labels of shape {labels.shape} and dtype "
            f"{labels.dtype}; expected {n} integers, one per image."
        )
    labels = labels.astype(np.int64)
    if n > 0 and (labels.min() < 0 or labels.max() > 9):
        raise DataError(
            f"CIFAR-10 file {label} has labels in {labels.min()}..{labels.max()}; expected labels in 0..9."
        )
    return data.reshape(n, 3, 32, 32), labels


def parse_cifar10_meta(raw: bytes, label: str) -> tuple[str, ...]:
    """Decode ``batches.meta`` into the ten class names.

    Parameters
    ----------
    raw : bytes
        Content of ``batches.meta``.
    label : str
        How to name the file in error messages.

    Returns
    -------
    tuple of str
        The label names, index = label.

    Raises
    ------
    DataError
        If the file is not a CIFAR-10 meta file with ten label names.
    """
    meta = _unpickle(raw, label)
    names = meta.get("label_names")
    if not isinstance(names, list | tuple) or len(names) != 10:
        raise DataError(
            f"CIFAR-10 file {label} is not a CIFAR-10 batches.meta: expected a list of 10 label_names."
        )
    try:
        return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)
    except UnicodeDecodeError:
        raise DataError(f"CIFAR-10 file {label} has label_names that are not valid UTF-8 text.") from None


@contextmanager
def _open_tar(archive: Path) -> Iterator[ReadMember]:
    """Serve CIFAR-10 files from a tar archive by base name, without extracting to disk."""
    try:
        tar = tarfile.open(archive, mode="r:*")  # noqa: SIM115 - closed by `with tar` below
    except (tarfile.TarError, OSError, EOFError, zlib.error):
        raise DataError(f"CIFAR-10 file {archive} is not a readable tar archive; {_EXPECTED}.") from None
    with tar:
        try:
            members = {}
            for m in tar.getmembers():
                base = m.name.rsplit("/", 1)[-1]
                if m.isfile() and base in _ALL_FILES and base not in members:
                    members[base] = m
        except (tarfile.TarError, OSError, EOFError, zlib.error):
            raise DataError(f"CIFAR-10 archive {archive} is truncated or corrupt.") from None
        if not any(name in members for name in (*_TRAIN_BATCHES, _TEST_BATCH)):
            raise DataError(f"no CIFAR-10 batches found in archive {archive}; {_EXPECTED}.")

        def read(name: str) -> bytes | None:
            member = members.get(name)
            if member is None:
                return None
            try:
                f = tar.extractfile(member)
                return f.read() if f is not None else None
            except (tarfile.TarError, OSError, EOFError, zlib.error):
                raise DataError(
                    f"CIFAR-10 file {name} in archive {archive} is truncated or corrupt."
                ) from None

        yield read


def _folder_reader(folder: Path) -> ReadMember:
    """Serve CIFAR-10 files from an extracted ``cifar-10-batches-py`` folder."""

    def read(name: str) -> bytes | None:
        file = folder / name
        if not file.is_file():
            return None
        try:
            return file.read_bytes()
        except OSError as exc:
            raise DataError(f"CIFAR-10 file {file} cannot be read ({exc.strerror}).") from None

    return read


@contextmanager
def _open_cifar10(path: Path) -> Iterator[tuple[ReadMember, Callable[[str], str]]]:
    """Locate CIFAR-10 at ``path`` and yield a member reader and a namer for messages."""
    if path.is_dir():
        for folder in (path, path / CIFAR10_FOLDER):
            if any((folder / name).is_file() for name in (*_TRAIN_BATCHES, _TEST_BATCH)):
                yield _folder_reader(folder), lambda name, d=folder: str(d / name)
                return
        archive = path / CIFAR10_ARCHIVE
        if not archive.is_file():
            raise DataError(f"no CIFAR-10 batches found at {path}; {_EXPECTED}.")
    elif path.is_file():
        archive = path
    else:
        raise DataError(f"no CIFAR-10 batches found at {path}; {_EXPECTED}.")
    with _open_tar(archive) as read:
        yield read, lambda name: f"{name} in archive {archive}"


def read_cifar10(
    path: str | os.PathLike[str], n_train: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """Read CIFAR-10 in the official python format.

    Parameters
    ----------
    path : str or path-like
        The ``cifar-10-batches-py`` folder, a folder containing it (or containing
        ``cifar-10-python.tar.gz``), or the unextracted ``cifar-10-python.tar.gz``.
    n_train : int or None
        Stop reading training batches once at least this many images are loaded; None reads
        ``data_batch_1`` ... ``data_batch_5``. The result may hold more than ``n_train`` images
        (whole batches) or fewer (when the dataset is smaller); the caller slices and checks.

    Returns
    -------
    x_train : np.ndarray, uint8, shape (N, 3, 32, 32)
        Concatenation of the data batches in order 1..5.
    y_train : np.ndarray, int64, shape (N,)
    x_test : np.ndarray, uint8, shape (M, 3, 32, 32)
        ``test_batch``.
    y_test : np.ndarray, int64, shape (M,)
    class_names : tuple of str
        From ``batches.meta``, or the official names when that file is absent.

    Raises
    ------
    DataError
        If the files are missing, truncated, of another kind or malformed.
    """
    path = Path(path).expanduser()
    with _open_cifar10(path) as (read, name_of):

        def load(name: str) -> tuple[np.ndarray, np.ndarray]:
            raw = read(name)
            if raw is None:
                raise DataError(f"CIFAR-10 file {name_of(name)} is missing; {_EXPECTED}.")
            return parse_cifar10_batch(raw, name_of(name))

        xs, ys = [], []
        for name in _TRAIN_BATCHES:
            if n_train is not None and sum(len(y) for y in ys) >= n_train:
                break
            x, y = load(name)
            xs.append(x)
            ys.append(y)
        x_test, y_test = load(_TEST_BATCH)
        meta = read(_META)
        class_names = CIFAR10_CLASS_NAMES if meta is None else parse_cifar10_meta(meta, name_of(_META))
    return np.concatenate(xs), np.concatenate(ys), x_test, y_test, class_names
