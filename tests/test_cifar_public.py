"""The shared CIFAR-10 subset through the public config -> splits path."""

from __future__ import annotations

import numpy as np

from ntklab.config import load_config
from ntklab.data.registry import load_raw, load_splits


def cifar_cfg(shared, *extra: str):
    path = shared / "data" / "cifar10-subset" / "cifar-10-batches-py"
    return load_config(None, ["data.name=cifar10", f"data.path='{path}'", *extra])


def test_cifar_subset_through_the_registry(shared) -> None:
    cfg = cifar_cfg(
        shared, "data.n_max=4500", "data.n_val=500", "data.n_test=1000", "data.standardize='channel'"
    )
    raw = load_raw(cfg.data)
    assert raw.x_train.shape == (5000, 3, 32, 32) and raw.x_test.shape == (1000, 3, 32, 32)
    assert raw.y_test[0] == 3 and raw.class_names[3] == "cat"
    assert np.bincount(raw.y_train, minlength=10).sum() == 5000
    s = load_splits(cfg.data)
    assert s.x_train.shape == (4500, 3, 32, 32) and s.y_train.shape == (4500, 10)
    # per-channel standardization fitted on the training pool only
    np.testing.assert_allclose(s.x_train.mean((0, 2, 3)), 0, atol=1e-4)
    np.testing.assert_allclose(s.x_train.std((0, 2, 3)), 1, atol=1e-3)
    assert np.abs(s.x_val.mean((0, 2, 3))).max() > 1e-4  # validation is not re-standardized
    counts = np.bincount(np.concatenate([s.labels_train, s.labels_val]), minlength=10)
    np.testing.assert_array_equal(counts, np.bincount(raw.y_train, minlength=10))


def test_binary_animals_vs_vehicles_downsampled(shared) -> None:
    cfg = cifar_cfg(
        shared,
        "data.n_max=512",
        "data.n_val=64",
        "data.n_test=200",
        "data.downsample=4",
        "data.classes=[[0,1,8,9],[2,3,4,5,6,7]]",
    )
    s = load_splits(cfg.data)
    assert s.x_train.shape[1:] == (3, 8, 8) and s.num_outputs == 1
    raw = load_raw(cfg.data)
    vehicles = np.isin(raw.y_test[:], [0, 1, 8, 9])
    keep = np.isin(raw.y_test, [0, 1, 8, 9, 2, 3, 4, 5, 6, 7])
    expected = np.where(vehicles[keep][:200], 0, 1)
    np.testing.assert_array_equal(s.labels_test, expected)
