"""From a raw dataset to the arrays every experiment uses.

Rules (docs/design.md conventions):

* the test set is fixed: the first ``n_test`` of the dataset's own test split;
* the training pool is permuted once (``data.seed``); the validation split is the first
  ``n_val`` of that permutation and the training order is the rest, so the n-sample training
  set is always the first n of one fixed order (nested subsets: one kernel on the largest n
  serves every smaller n by slicing);
* standardization (per feature or per channel) and ZCA are fitted on the training pool only
  (never on validation or test points) and applied to all splits;
* targets: one-hot minus 1/C for C classes; ±1 for binary tasks (one output).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ntklab.data.raw import RawDataset
from ntklab.errors import DataError


@dataclass(frozen=True)
class Splits:
    """Prepared arrays, float32 inputs in torch layout and float32 targets.

    Attributes
    ----------
    x_train (N, *shape), y_train (N, K), labels_train (N,)
        The training order: the first n rows are the n-sample training set.
    x_val (V, *shape), y_val (V, K), labels_val (V,)
    x_test (T, *shape), y_test (T, K), labels_test (T,)
    num_outputs : int
        K: C for C classes, 1 for a binary task.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    labels_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    labels_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    labels_test: np.ndarray
    num_outputs: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def targets(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Regression targets: ±1 (N, 1) for 2 classes, else one-hot minus 1/C (N, C)."""
    if num_classes == 2:
        return np.where(labels == 1, 1.0, -1.0).astype(np.float32)[:, None]
    y = np.full((len(labels), num_classes), -1.0 / num_classes, dtype=np.float32)
    y[np.arange(len(labels)), labels] += 1.0
    return y


def select_classes(
    x: np.ndarray, y: np.ndarray, classes: list[int | list[int]], num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keep samples of the given classes; entry k (a label or a group of labels) becomes label k."""
    groups = [[c] if isinstance(c, int) else list(c) for c in classes]
    flat = [c for g in groups for c in g]
    bad = [c for c in flat if not 0 <= c < num_classes]
    if bad:
        raise DataError(
            f"data.classes names label {bad[0]}, but this dataset has labels 0..{num_classes - 1}."
        )
    if len(set(flat)) != len(flat):
        raise DataError(f"data.classes lists a label twice: {classes}.")
    new = np.full(num_classes, -1, dtype=np.int64)
    for k, g in enumerate(groups):
        new[g] = k
    keep = new[y] >= 0
    return x[keep], new[y[keep]]


def fit_standardizer(x: np.ndarray, how: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std fitted on ``x`` (N, C, *spatial): per feature or per channel."""
    x64 = x.astype(np.float64)
    if how == "feature":
        mean, std = x64.mean(0), x64.std(0)
    elif how == "channel":
        axes = (0, *range(2, x.ndim))
        mean, std = x64.mean(axes, keepdims=True)[0], x64.std(axes, keepdims=True)[0]
    else:
        return np.zeros(x.shape[1:]), np.ones(x.shape[1:])
    return mean, np.where(std > 1e-12, std, 1.0)


def reshape_images(x: np.ndarray, downsample: int = 1, channels: int | None = None) -> np.ndarray:
    """Average-pool (N, C, H, W) images by ``downsample`` and convert channels (1 <-> 3).

    Per-sample operations only, so they never leak information between splits.
    """
    if downsample > 1:
        if x.ndim != 4 or x.shape[2] % downsample or x.shape[3] % downsample:
            raise DataError(
                f"data.downsample = {downsample} needs images whose height and width it divides; "
                f"got samples of shape {x.shape[1:]}."
            )
        n, c, h, w = x.shape
        x = x.reshape(n, c, h // downsample, downsample, w // downsample, downsample).mean((3, 5))
    if channels is not None and x.ndim >= 3 and x.shape[1] != channels:
        if channels == 3 and x.shape[1] == 1:
            x = np.repeat(x, 3, axis=1)
        elif channels == 1:
            x = x.mean(1, keepdims=True)
        else:
            raise DataError(f"data.channels = {channels} cannot be made from {x.shape[1]} input channels.")
    return x.astype(np.float32, copy=False)


def prepare(
    raw: RawDataset,
    *,
    n_max: int,
    n_val: int,
    n_test: int | None,
    seed: int,
    classes: list[int | list[int]] | None = None,
    standardize: str = "feature",
    zca: float | None = None,
    downsample: int = 1,
    channels: int | None = None,
) -> Splits:
    """Split, standardize and encode ``raw`` (see the module docstring for the rules)."""
    x, y, xt, yt, c = raw.x_train, raw.y_train, raw.x_test, raw.y_test, raw.num_classes
    if downsample > 1 or channels is not None:
        x, xt = reshape_images(x, downsample, channels), reshape_images(xt, downsample, channels)
    if classes is not None and c == 0:
        raise DataError("data.classes needs class labels, but this dataset has regression targets.")
    if classes is not None:
        x, y = select_classes(x, y, classes, c)
        xt, yt = select_classes(xt, yt, classes, c)
        c = len(classes)
    pool = len(y) - n_val
    if pool < n_max:
        raise DataError(
            f"data.n_max = {n_max} is larger than the training pool of {raw.name} "
            f"({pool} samples after the {n_val}-sample validation split); use at most {max(pool, 0)}."
        )
    perm = np.random.default_rng(seed).permutation(len(y))
    val, train = perm[:n_val], perm[n_val:]
    if n_test is not None:
        if n_test > len(yt):
            raise DataError(
                f"data.n_test = {n_test} is larger than the test set of {raw.name} ({len(yt)} samples)."
            )
        xt, yt = xt[:n_test], yt[:n_test]
    mean, std = fit_standardizer(x[train], standardize)

    def tf(a: np.ndarray) -> np.ndarray:
        return ((a - mean) / std).astype(np.float32)

    xs_train, xs_val, xs_test = tf(x[train]), tf(x[val]), tf(xt)
    if zca is not None:
        from ntklab.data.zca import fit_zca

        w = fit_zca(xs_train, zca)
        xs_train, xs_val, xs_test = w.transform(xs_train), w.transform(xs_val), w.transform(xs_test)
    k = 1 if c == 2 else c
    return Splits(
        raw.name,
        xs_train,
        targets(y[train], c),
        y[train],
        xs_val,
        targets(y[val], c),
        y[val],
        xs_test,
        targets(yt, c),
        yt,
        k,
    )
