"""Embedded datasets that need no files: MNIST-1D (generated) and scikit-learn's digits.

MNIST-1D is generated locally by the ``mnist1d`` package's own generator (never downloaded) and
cached on disk as ``.npz`` after the first generation, keyed by the generator arguments
(``num_samples`` among them, so every pool size has its own file). The generator is a Python
loop over samples: about 0.4 ms of CPU per sample (150,000 samples: 56 s of CPU and 340 MB
peak memory on a 2-core machine), paid once; the cached file (25 MB at 150,000) loads in 0.1 s.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ntklab.data.raw import RawDataset

logger = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Where generated data is cached: ``$NTKLAB_CACHE_DIR`` or ``~/.cache/ntklab``."""
    root = os.environ.get("NTKLAB_CACHE_DIR") or Path.home() / ".cache" / "ntklab"
    return Path(root)


def atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write an ``.npz`` under a temporary name, fsync, then rename (never a partial file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_mnist1d(num_samples: int = 25_000, train_split: float = 0.8, seed: int = 42) -> RawDataset:
    """MNIST-1D (Greydanus 2020) from its generator: x (N, 1, 40) float32, 10 classes.

    ``num_samples`` in total (rounded down to a multiple of 10: the generator makes
    ``num_samples // 10`` per class), the first ``train_split`` of them the training pool (the
    package's own split); ``seed`` is the generator's seed (42 reproduces the published set's
    construction). The generator seeds NumPy's global RNG; its state is restored afterwards.
    """
    import mnist1d.data

    args = mnist1d.data.get_dataset_args(as_dict=True)
    args.update(num_samples=int(num_samples), train_split=float(train_split), seed=int(seed))
    args.pop("url", None)
    digest = hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir() / f"mnist1d-{digest}.npz"
    cached = _read_cache(path)
    if cached is not None:
        x, y, xt, yt = cached
    else:
        logger.info("generating MNIST-1D: %d samples, once (cached at %s)", num_samples, path)
        state = np.random.get_state()
        try:
            d = mnist1d.data.make_dataset(mnist1d.utils.ObjectView(dict(args)))
        finally:
            np.random.set_state(state)
        x, y = d["x"].astype(np.float32), d["y"].astype(np.int64)
        xt, yt = d["x_test"].astype(np.float32), d["y_test"].astype(np.int64)
        atomic_save_npz(path, x=x, y=y, x_test=xt, y_test=yt)
    names = tuple(str(i) for i in range(10))
    return RawDataset("mnist1d", x[:, None, :], y, xt[:, None, :], yt, 10, names)


def _read_cache(path: Path) -> tuple[np.ndarray, ...] | None:
    """The cached MNIST-1D arrays (data only, never a pickle); None if absent or unreadable
    (then they are generated again)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return tuple(np.asarray(z[k]) for k in ("x", "y", "x_test", "y_test"))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return None


def load_digits(test_fraction: float = 0.2) -> RawDataset:
    """scikit-learn's 8×8 digits (1,797 images): x (N, 1, 8, 8) float32 in [0, 1], 10 classes.

    The last ``test_fraction`` of the file order is the fixed test set.
    """
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    cut = int(round(len(y) * (1 - test_fraction)))
    names = tuple(str(i) for i in range(10))
    return RawDataset("digits", x[:cut], y[:cut], x[cut:], y[cut:], 10, names)
