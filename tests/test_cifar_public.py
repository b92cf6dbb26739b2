"""A CIFAR-10 in the official format through the public config -> splits path."""

from __future__ import annotations

import numpy as np

from ntklab.config import load_config
from ntklab.data.registry import load_raw, load_splits


def cifar_cfg(cifar10, *extra: str):
    return load_config(None, ["data.name=cifar10", f"data.path='{cifar10.folder}'", *extra])


def test_cifar_subset_through_the_registry(cifar10) -> None:
    cfg = cifar_cfg(
        cifar10, "data.n_max=450", "data.n_val=50", "data.n_test=150", "data.standardize='channel'"
    )
    raw = load_raw(cfg.data)
    assert raw.x_train.shape == (500, 3, 32, 32) and raw.x_test.shape == (200, 3, 32, 32)
    # test image 7 has label (3*7 + 5) % 10 = 6; training image 150 is image 50 of data_batch_2
    assert raw.y_test[7] == 6 and raw.class_names[6] == "frog"
    assert raw.y_train[150] == 1 and raw.class_names[1] == "automobile"
    np.testing.assert_array_equal(np.rint(raw.x_train[150, 0, 0, :3] * 255), [1, 50, 1])
    np.testing.assert_array_equal(raw.y_train, cifar10.y_train)
    np.testing.assert_array_equal(raw.x_test, cifar10.x_test / np.float32(255))
    s = load_splits(cfg.data)
    assert s.x_train.shape == (450, 3, 32, 32) and s.y_train.shape == (450, 10)
    assert s.x_test.shape == (150, 3, 32, 32)
    # per-channel standardization fitted on the training pool only
    np.testing.assert_allclose(s.x_train.mean((0, 2, 3)), 0, atol=1e-4)
    np.testing.assert_allclose(s.x_train.std((0, 2, 3)), 1, atol=1e-3)
    assert np.abs(s.x_val.mean((0, 2, 3))).max() > 1e-4  # validation is not re-standardized
    counts = np.bincount(np.concatenate([s.labels_train, s.labels_val]), minlength=10)
    np.testing.assert_array_equal(counts, np.full(10, 50))  # every training image, 50 per class
    # images and labels stay paired through the shuffle: pixel (0, 2) of the red plane holds the label
    marks = [np.unique(s.x_train[s.labels_train == c, 0, 0, 2]) for c in range(10)]
    assert all(len(m) == 1 for m in marks) and np.all(np.diff(np.concatenate(marks)) > 0)


def test_binary_animals_vs_vehicles_downsampled(cifar10) -> None:
    cfg = cifar_cfg(
        cifar10,
        "data.n_max=256",
        "data.n_val=64",
        "data.n_test=150",
        "data.downsample=4",
        "data.classes=[[0,1,8,9],[2,3,4,5,6,7]]",
        "data.standardize='none'",
    )
    s = load_splits(cfg.data)
    assert s.x_train.shape[1:] == (3, 8, 8) and s.num_outputs == 1
    vehicles = np.isin(cifar10.y_test, [0, 1, 8, 9])
    expected = np.where(vehicles[:150], 0, 1)
    np.testing.assert_array_equal(s.labels_test, expected)
    # test labels are 5, 8, 1, 4, 7, 0, ...: animal, vehicle, vehicle, animal, animal, vehicle
    np.testing.assert_array_equal(s.labels_test[:6], [1, 0, 0, 1, 1, 0])
    # the first test image, 4x4 average-pooled
    pooled = (cifar10.x_test[0] / np.float32(255)).reshape(3, 8, 4, 8, 4).mean((2, 4))
    np.testing.assert_allclose(s.x_test[0], pooled, atol=1e-6)
