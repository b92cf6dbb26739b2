"""A user's own data as one ``.npz``: ``x_train``, ``y_train``, ``x_test``, ``y_test``.

Inputs in torch layout ((N, D), (N, C, L) or (N, C, H, W)), real numbers within float32's
range; ``y`` are integer class labels 0..C-1 (C at most 10,000). The arrays are checked by
:func:`ntklab.data.checks.check_arrays` before anything else (one sentence per problem).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ntklab.data.checks import check_arrays
from ntklab.data.raw import RawDataset
from ntklab.errors import DataError

KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_npz(path: Path) -> RawDataset:
    """Read and check a user's ``.npz`` (one-sentence DataError on any problem)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist; expected an .npz with keys {', '.join(KEYS)}.")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in KEYS if k not in z.files]
            if missing:
                raise DataError(
                    f"data file {path} lacks key(s) {', '.join(missing)}; it needs {', '.join(KEYS)}."
                )
            x, y, xt, yt = (np.asarray(z[k]) for k in KEYS)
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise DataError(f"data file {path} is not a readable .npz ({type(exc).__name__}).") from None
    c = check_arrays(f"data file {path}", x, y, xt, yt)  # before the cast: overflow shows
    return RawDataset(
        path.stem, x.astype(np.float32), y.astype(np.int64), xt.astype(np.float32), yt.astype(np.int64), c
    )
