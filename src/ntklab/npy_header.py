"""The header of an ``.npy`` stream, read without ever unpickling (shared by the unit store's
codec and the CIFAR-5m part reader)."""

from __future__ import annotations

from typing import BinaryIO

import numpy as np


def read_npy_header(f: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of the ``.npy`` stream at ``f`` (left at the data).

    Raises ``ValueError`` for a format version other than 1.0 or 2.0.
    """
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f".npy format {version[0]}.{version[1]}; expected 1.0 or 2.0")
    return tuple(shape), bool(fortran), dtype
