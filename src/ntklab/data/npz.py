"""A user's own data as one ``.npz``: ``x_train``, ``y_train``, ``x_test``, ``y_test``.

Inputs in torch layout ((N, D), (N, C, L) or (N, C, H, W)). Integer ``y`` are class labels
(0..C-1); float ``y`` ((N,) or (N, K)) are regression targets, used as they are.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

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
    if len(x) != len(y) or len(xt) != len(yt):
        raise DataError(
            f"data file {path}: x and y differ in length ({len(x)} vs {len(y)}, {len(xt)} vs {len(yt)})."
        )
    if x.shape[1:] != xt.shape[1:]:
        raise DataError(
            f"data file {path}: x_train samples {x.shape[1:]} and x_test samples {xt.shape[1:]} differ in shape."
        )
    if np.issubdtype(y.dtype, np.integer):
        c = int(max(y.max(), yt.max())) + 1
        if y.min() < 0 or yt.min() < 0 or y.ndim != 1:
            raise DataError(f"data file {path}: integer labels must be a 1-D array of classes 0..C-1.")
        return RawDataset(
            path.stem, x.astype(np.float32), y.astype(np.int64), xt.astype(np.float32), yt.astype(np.int64), c
        )
    return RawDataset(
        path.stem, x.astype(np.float32), y.astype(np.float32), xt.astype(np.float32), yt.astype(np.float32), 0
    )
