"""MNIST-1D is generated once per pool size and then read from its cache (no pickle)."""

from __future__ import annotations

import mnist1d.data
import numpy as np
import pytest

from ntklab.config import DataConfig
from ntklab.data import embedded


def test_pool_size_is_part_of_the_cache_key(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("NTKLAB_CACHE_DIR", str(tmp_path))
    small = embedded.load_mnist1d(1000)
    large = embedded.load_mnist1d(1500)
    assert small.x_train.shape == (800, 1, 40) and large.x_train.shape == (1200, 1, 40)
    assert small.x_test.shape == (200, 1, 40) and large.x_test.shape == (300, 1, 40)
    files = sorted(tmp_path.glob("mnist1d-*.npz"))
    assert len(files) == 2  # one file per num_samples

    def no_generation(*args, **kwargs):
        raise AssertionError("MNIST-1D was generated again instead of read from the cache")

    monkeypatch.setattr(mnist1d.data, "make_dataset", no_generation)
    again = embedded.load_mnist1d(1500)
    np.testing.assert_array_equal(again.x_train, large.x_train)
    np.testing.assert_array_equal(again.y_test, large.y_test)
    with np.load(files[0], allow_pickle=False) as z:  # plain arrays, readable without pickle
        assert sorted(z.files) == ["x", "x_test", "y", "y_test"]


def test_unreadable_cache_is_generated_again(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("NTKLAB_CACHE_DIR", str(tmp_path))
    first = embedded.load_mnist1d(1000)
    (path,) = tmp_path.glob("mnist1d-*.npz")
    path.write_bytes(b"truncated")
    second = embedded.load_mnist1d(1000)
    np.testing.assert_array_equal(first.x_train, second.x_train)


def test_config_allows_large_pools() -> None:
    assert DataConfig(num_samples=150_000).num_samples == 150_000
    with pytest.raises(ValueError):
        DataConfig(num_samples=99)
