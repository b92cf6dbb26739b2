"""Data rules: nested subsets, standardization fitted on training data only, targets, classes."""

from __future__ import annotations

import numpy as np
import pytest

from ntklab.config import load_config
from ntklab.data.prepare import prepare, targets
from ntklab.data.raw import RawDataset
from ntklab.data.registry import load_splits
from ntklab.errors import DataError


def toy(n: int = 300, n_test: int = 50, c: int = 4, seed: int = 0) -> RawDataset:
    rng = np.random.default_rng(seed)
    x = rng.normal(3.0, 2.0, size=(n, 1, 6)).astype(np.float32)
    xt = rng.normal(-5.0, 7.0, size=(n_test, 1, 6)).astype(np.float32)
    return RawDataset("toy", x, rng.integers(0, c, n), xt, rng.integers(0, c, n_test), c)


def test_nested_subsets_are_prefixes_of_one_permutation() -> None:
    raw = toy()
    a = prepare(raw, n_max=100, n_val=20, n_test=None, seed=3)
    b = prepare(raw, n_max=200, n_val=20, n_test=None, seed=3)
    # the same order whatever n_max: the n-sample set is the first n of one permutation
    np.testing.assert_array_equal(a.x_train[:100], b.x_train[:100])
    np.testing.assert_array_equal(a.x_val, b.x_val)
    # validation and training are disjoint and together the whole pool
    raw_rows = {r.tobytes() for r in raw.x_train}
    assert len(raw_rows) == 300
    c = prepare(raw, n_max=100, n_val=20, n_test=None, seed=4)
    assert not np.array_equal(a.x_train[:100], c.x_train[:100])


def test_standardization_fitted_on_training_pool_only() -> None:
    raw = toy()
    s = prepare(raw, n_max=100, n_val=20, n_test=None, seed=0)
    np.testing.assert_allclose(s.x_train.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(s.x_train.std(0), 1, atol=1e-4)
    # the test set keeps its own (very different) statistics: not re-standardized
    assert abs(s.x_test.mean() - (-5.0 - 3.0) / 2.0) < 1.0
    # changing test or validation data does not change the transform of training data
    raw2 = RawDataset("toy", raw.x_train, raw.y_train, raw.x_test * 100, raw.y_test, 4)
    s2 = prepare(raw2, n_max=100, n_val=20, n_test=None, seed=0)
    np.testing.assert_array_equal(s.x_train, s2.x_train)


def test_targets_one_hot_minus_mean_and_binary() -> None:
    y = targets(np.array([0, 2]), 3)
    np.testing.assert_allclose(y, [[2 / 3, -1 / 3, -1 / 3], [-1 / 3, -1 / 3, 2 / 3]], rtol=1e-6)
    np.testing.assert_array_equal(targets(np.array([0, 1, 1]), 2), [[-1], [1], [1]])


def test_class_groups_make_a_binary_task() -> None:
    s = prepare(toy(), n_max=50, n_val=10, n_test=None, seed=0, classes=[[0, 1], [3]])
    assert s.num_outputs == 1
    assert set(np.unique(s.y_train)) == {-1.0, 1.0}
    assert set(np.unique(s.labels_test)) <= {0, 1}


def test_errors() -> None:
    with pytest.raises(DataError, match="n_max = 500 is larger than the training pool"):
        prepare(toy(), n_max=500, n_val=20, n_test=None, seed=0)
    with pytest.raises(DataError, match="label 7"):
        prepare(toy(), n_max=10, n_val=2, n_test=None, seed=0, classes=[0, 7])


def test_mnist1d_generated_and_cached() -> None:
    cfg = load_config(None, ["data.num_samples=1000", "data.n_max=512", "data.n_val=64", "data.n_test=100"])
    s = load_splits(cfg.data)
    assert s.x_train.shape == (800 - 64, 1, 40) and s.x_test.shape == (100, 1, 40)
    assert s.y_train.shape[1] == 10
    s2 = load_splits(cfg.data)
    np.testing.assert_array_equal(s.x_train, s2.x_train)


def test_digits_is_embedded() -> None:
    cfg = load_config(None, ["data.name=digits", "data.n_max=1000", "data.n_val=100", "data.n_test=200"])
    s = load_splits(cfg.data)
    assert s.x_train.shape[1:] == (1, 8, 8) and len(s.x_test) == 200
