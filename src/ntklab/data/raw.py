"""The raw form every dataset loader returns, before splitting and preprocessing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RawDataset:
    """A labelled dataset with a fixed train pool and a fixed test set.

    Attributes
    ----------
    name : str
        Registry name (``"mnist1d"``, ``"cifar10"``, ...).
    x_train : np.ndarray, float32, shape (N, C, *spatial)
        Training pool in torch layout: (N, C, L) for 1D signals, (N, C, H, W) for images,
        (N, D) for plain feature vectors.
    y_train : np.ndarray, int64, shape (N,)
        Class labels in ``0 .. num_classes - 1``.
    x_test, y_test : np.ndarray
        The fixed test set, same layout.
    num_classes : int
        Number of classes of the original labelling.
    class_names : tuple of str or None
        Human-readable names, index = label.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_names: tuple[str, ...] | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, without the batch axis."""
        return tuple(self.x_train.shape[1:])
