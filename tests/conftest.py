"""Shared test fixtures: a private cache per session, a small CIFAR-10 in the official format."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

CIFAR10_TRAIN_PER_BATCH = 100
CIFAR10_TEST_SIZE = 200
CIFAR10_NAMES = (
    b"airplane",
    b"automobile",
    b"bird",
    b"cat",
    b"deer",
    b"dog",
    b"frog",
    b"horse",
    b"ship",
    b"truck",
)


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Generated data and unit results go to a temporary cache, never the user's."""
    mp = pytest.MonkeyPatch()
    mp.setenv("NTKLAB_CACHE_DIR", str(tmp_path_factory.mktemp("ntklab-cache")))
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.manual_seed(0)


# ------------------------------------------------------------------------------ CIFAR-10 files


def _py2(value: object) -> bytes:
    """One value as the opcodes Python 2's cPickle (protocol 2) wrote for it."""
    if isinstance(value, bytes):  # a Python 2 str
        if len(value) < 256:
            return b"U" + bytes([len(value)]) + value  # SHORT_BINSTRING
        return b"T" + struct.pack("<i", len(value)) + value  # BINSTRING
    if isinstance(value, bool) or value is None:
        return {None: b"N", False: b"\x89", True: b"\x88"}[value]
    if isinstance(value, int):
        if 0 <= value < 256:
            return b"K" + bytes([value])  # BININT1
        if 0 <= value < 65536:
            return b"M" + struct.pack("<H", value)  # BININT2
        return b"J" + struct.pack("<i", value)  # BININT
    if isinstance(value, list):
        return b"](" + b"".join(_py2(v) for v in value) + b"e"  # EMPTY_LIST MARK ... APPENDS
    if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 2:
        # numpy's ndarray.__reduce__: _reconstruct(ndarray, (0,), 'b'), then
        # __setstate__((1, shape, dtype('u1'), False, raw bytes)).
        dtype = (
            b"cnumpy\ndtype\n" + _py2(b"u1") + _py2(0) + _py2(1) + b"\x87R"
            b"(" + _py2(3) + _py2(b"|") + b"NNN" + _py2(-1) + _py2(-1) + _py2(0) + b"tb"
        )
        return (
            b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + _py2(0) + b"\x85"
            + _py2(b"b") + b"\x87R"
            + b"(" + _py2(1) + _py2(value.shape[0]) + _py2(value.shape[1]) + b"\x86"
            + dtype + _py2(False) + _py2(np.ascontiguousarray(value).tobytes()) + b"tb"
        )  # fmt: skip
    raise TypeError(f"no Python 2 pickle for {type(value).__name__}")


def py2_pickle(d: dict[bytes, object]) -> bytes:
    """A dict pickled as Python 2 pickled the official CIFAR-10 files (str keys are bytes here)."""
    body = b"".join(_py2(k) + _py2(v) for k, v in d.items())
    return b"\x80\x02}(" + body + b"u."  # PROTO 2, EMPTY_DICT, MARK ... SETITEMS, STOP


@dataclass(frozen=True)
class Cifar10Files:
    """A CIFAR-10 written by :func:`cifar10` and the arrays it holds.

    Image ``i`` of file ``f`` (``f`` = 0..4 for ``data_batch_1..5``, 5 for ``test_batch``) has
    label ``(3 i + f) mod 10``; its red plane starts with the pixels ``f, i, label`` (row 0,
    columns 0..2), every other pixel is random.
    """

    folder: Path  # the cifar-10-batches-py folder
    x_train: np.ndarray  # uint8 (500, 3, 32, 32), batches 1..5 in order
    y_train: np.ndarray  # int64 (500,)
    x_test: np.ndarray  # uint8 (200, 3, 32, 32)
    y_test: np.ndarray  # int64 (200,)


def write_cifar10(folder: Path, seed: int = 0) -> Cifar10Files:
    """Write ``data_batch_1..5``, ``test_batch`` and ``batches.meta`` into ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    files = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
    for f, name in enumerate(files):
        n = CIFAR10_TEST_SIZE if name == "test_batch" else CIFAR10_TRAIN_PER_BATCH
        i = np.arange(n)
        y = (3 * i + f) % 10
        x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        x[:, 0, 0, :3] = np.stack([np.full(n, f), i, y], axis=1)
        label = b"testing batch 1 of 1" if name == "test_batch" else b"training batch %d of 5" % (f + 1)
        batch = {b"batch_label": label, b"labels": [int(v) for v in y], b"data": x.reshape(n, 3072)}
        (folder / name).write_bytes(py2_pickle(batch))
        xs.append(x)
        ys.append(y.astype(np.int64))
    meta = {b"num_cases_per_batch": CIFAR10_TRAIN_PER_BATCH, b"label_names": list(CIFAR10_NAMES)}
    (folder / "batches.meta").write_bytes(py2_pickle({**meta, b"num_vis": 3072}))
    return Cifar10Files(folder, np.concatenate(xs[:5]), np.concatenate(ys[:5]), xs[5], ys[5])


@pytest.fixture(scope="session")
def cifar10(tmp_path_factory: pytest.TempPathFactory) -> Cifar10Files:
    """A small CIFAR-10 (500 training, 200 test images) in the official python format.

    ``<tmp>/cifar-10-batches-py/`` as ``cifar-10-python.tar.gz`` unpacks: Python 2 pickles of
    dicts with ``data`` (uint8 (N, 3072): 1024 red, 1024 green, 1024 blue values, row-major
    32x32) and ``labels``, and ``batches.meta`` with the ten class names. Read-only for tests:
    copy it to change it.
    """
    return write_cifar10(tmp_path_factory.mktemp("cifar10") / "cifar-10-batches-py")
