"""Dataset registry: a name in the config -> a loader -> prepared splits."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ntklab.config.sections import DataConfig
from ntklab.data.checks import check_arrays
from ntklab.data.prepare import Splits, prepare
from ntklab.data.raw import RawDataset
from ntklab.errors import DataError


def _images(fn_name: str) -> Callable[[DataConfig, int], RawDataset]:
    def load(cfg: DataConfig, n_needed: int) -> RawDataset:
        from ntklab.data import images

        return getattr(images, fn_name)(Path(cfg.path), n_train=n_needed)

    return load


def _cifar5m(cfg: DataConfig, n_needed: int) -> RawDataset:
    from ntklab.data.images import load_cifar5m

    labels = None
    if cfg.classes:  # labels outside 0..9 are reported by prepare (select_classes)
        labels = [c for g in cfg.classes for c in ([g] if isinstance(g, int) else g) if 0 <= c < 10]
    return load_cifar5m(Path(cfg.path), n_train=n_needed, classes=labels)


def _npz(cfg: DataConfig, n_needed: int) -> RawDataset:
    from ntklab.data.npz import load_npz

    return load_npz(Path(cfg.path))


def _mnist1d(cfg: DataConfig, n_needed: int) -> RawDataset:
    from ntklab.data.embedded import load_mnist1d

    return load_mnist1d(cfg.num_samples)


def _digits(cfg: DataConfig, n_needed: int) -> RawDataset:
    from ntklab.data.embedded import load_digits

    return load_digits()


LOADERS: dict[str, Callable[[DataConfig, int], RawDataset]] = {
    "mnist1d": _mnist1d,
    "digits": _digits,
    "cifar10": _images("load_cifar10"),
    "cifar5m": _cifar5m,
    "svhn": _images("load_svhn"),
    "mnist": _images("load_mnist"),
    "fashion-mnist": _images("load_fashion_mnist"),
    "npz": _npz,
}


PARTIAL = ("cifar10", "cifar5m", "svhn", "mnist", "fashion-mnist")  # loaders that read only n_train
BY_CLASS = ("cifar5m",)  # ... and with data.classes, only n_train samples of those classes


def training_read(cfg: DataConfig, n_max: int | None = None) -> int | None:
    """How many training samples :func:`load_raw` reads (None: all of them).

    The validation/training permutation and the standardization are fitted on what is read, so
    for these datasets this number is part of what determines every sample a unit sees. With
    ``data.classes`` it counts samples of those classes (``BY_CLASS`` loaders; the others read
    the whole pool then).
    """
    if cfg.name not in PARTIAL or (cfg.classes and cfg.name not in BY_CLASS):
        return None
    return (n_max or cfg.n_max) + cfg.n_val


def load_raw(cfg: DataConfig, n_max: int | None = None) -> RawDataset:
    """The raw dataset named by ``cfg.name``; only as much as ``n_max`` needs where possible.

    Every dataset is checked here (:func:`ntklab.data.checks.check_arrays`: empty splits,
    shapes, labels, non-finite or out-of-range inputs), so every experiment and ``ntklab
    explain`` stop with one sentence before any work. A user's ``.npz`` is checked by its
    loader, on the arrays as stored.
    """
    if cfg.name not in LOADERS:
        raise DataError(f"unknown dataset {cfg.name!r}; allowed: {', '.join(LOADERS)}.")
    # class subsets need the whole pool to find enough samples of the chosen classes, except
    # for BY_CLASS loaders, which stream until they have found enough
    raw = LOADERS[cfg.name](cfg, training_read(cfg, n_max))
    if cfg.name != "npz":
        check_arrays(f"dataset {raw.name}", raw.x_train, raw.y_train, raw.x_test, raw.y_test)
    return raw


def load_splits(cfg: DataConfig, n_max: int | None = None) -> Splits:
    """Load and prepare the dataset of ``cfg`` with room for ``n_max`` training samples."""
    raw = load_raw(cfg, n_max)
    return prepare(
        raw,
        n_max=n_max or cfg.n_max,
        n_val=cfg.n_val,
        n_test=cfg.n_test,
        seed=cfg.seed,
        classes=cfg.classes,
        standardize=cfg.standardize,
        zca=cfg.zca,
        downsample=cfg.downsample,
        channels=cfg.channels,
    )
