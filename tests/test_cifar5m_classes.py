"""CIFAR-5m with ``data.classes``: parts are streamed only until enough images of the classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ntklab.config import DataConfig
from ntklab.data import cifar5m
from ntklab.data.images import load_cifar5m
from ntklab.data.registry import load_splits, training_read
from ntklab.errors import DataError
from tiny import make_cifar5m


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """Records every part whose labels or images are read, and which rows."""
    seen: dict[str, list] = {"labels": [], "take": [], "rows": []}
    labels, take, rows = cifar5m.Cifar5mPart.labels, cifar5m.Cifar5mPart.take, cifar5m.Cifar5mPart.rows

    def spy_labels(self, stop):
        seen["labels"].append(self.file.name)
        return labels(self, stop)

    def spy_take(self, idx):
        seen["take"].append((self.file.name, np.array(idx)))
        return take(self, idx)

    def spy_rows(self, start, stop):
        seen["rows"].append((self.file.name, start, stop))
        return rows(self, start, stop)

    monkeypatch.setattr(cifar5m.Cifar5mPart, "labels", spy_labels)
    monkeypatch.setattr(cifar5m.Cifar5mPart, "take", spy_take)
    monkeypatch.setattr(cifar5m.Cifar5mPart, "rows", spy_rows)
    return seen


def test_class_filtered_load_reads_only_the_parts_it_needs(tmp_path: Path, spy: dict) -> None:
    x, y = make_cifar5m(tmp_path, [60, 60, 60, 40])
    # part2 is garbage: any read of it fails, so a load that succeeds never touched it
    (tmp_path / "part2.npz").write_bytes(b"not a zip file" * 100)
    n_test = 10
    pool_x, pool_y = x[:120], y[:120]  # parts 0 and 1
    keep = np.flatnonzero(np.isin(pool_y, [3, 5]))
    n = len(keep) - 4  # needs part1, but not all of it
    assert np.isin(y[:60], [3, 5]).sum() < n
    ds = load_cifar5m(tmp_path, n_train=n, n_test=n_test, classes=[5, 3])

    expected = pool_x[keep[:n]].transpose(0, 3, 1, 2).astype(np.float32) / 255
    np.testing.assert_array_equal(ds.x_train, expected)
    np.testing.assert_array_equal(ds.y_train, pool_y[keep[:n]])
    np.testing.assert_array_equal(ds.y_test, y[-n_test:])  # the test set is not filtered
    # labels of parts 0 and 1 only; images: exactly the rows of the chosen classes
    assert spy["labels"] == ["part0.npz", "part1.npz"]
    assert [name for name, _ in spy["take"]] == ["part0.npz", "part1.npz"]
    np.testing.assert_array_equal(spy["take"][0][1], keep[keep < 60])
    np.testing.assert_array_equal(spy["take"][1][1], keep[keep >= 60][: n - (keep < 60).sum()] - 60)
    assert spy["rows"] == [("part3.npz", 30, 40)]  # the test tail of the last part

    # asking for more than parts 0 and 1 hold has to open part2: the broken part is named
    with pytest.raises(DataError, match="part2.npz"):
        load_cifar5m(tmp_path, n_train=len(keep) + 1, n_test=n_test, classes=[3, 5])


def test_stored_and_compressed_parts_give_the_same_rows(tmp_path: Path) -> None:
    x, y = make_cifar5m(tmp_path, [50, 50, 30])
    keep = np.flatnonzero(np.isin(y[:120], [0, 7, 9]))
    ds = load_cifar5m(tmp_path, n_train=len(keep), n_test=10, classes=[0, 7, 9])
    np.testing.assert_array_equal(ds.y_train, y[keep])
    np.testing.assert_array_equal(ds.x_train, x[keep].transpose(0, 3, 1, 2).astype(np.float32) / 255)
    with pytest.raises(DataError, match="fewer than n_train"):
        load_cifar5m(tmp_path, n_train=len(keep) + 1, n_test=10, classes=[0, 7, 9])


def test_config_classes_stream_through_the_registry(tmp_path: Path, monkeypatch, spy: dict) -> None:
    monkeypatch.setattr(cifar5m, "TAKE_CHUNK_BYTES", 5 * 3072)  # several chunks per deflated part
    x, y = make_cifar5m(tmp_path, [300, 300, 300, 10_000])
    (tmp_path / "part2.npz").write_bytes(b"\0" * 1000)
    cfg = DataConfig(name="cifar5m", path=str(tmp_path), classes=[[1, 2], 8], n_min=16, n_max=96, n_val=32)
    assert training_read(cfg) == 96 + 32  # images of the classes, part of every unit's key
    s = load_splits(cfg)
    assert len(s.x_train) == 96 and len(s.x_val) == 32 and s.num_outputs == 1  # two classes: ±1
    assert set(spy["labels"]) <= {"part0.npz", "part1.npz"}
    assert "part2.npz" not in spy["labels"]
    # the pool is the first 128 images of classes 1, 2, 8 in file order (labels 0, 0, 1)
    keep = np.flatnonzero(np.isin(y, [1, 2, 8]))[:128]
    got = np.sort(np.concatenate([s.labels_train, s.labels_val]))
    np.testing.assert_array_equal(got, np.sort(np.where(y[keep] == 8, 1, 0)))
    assert set(np.unique(s.labels_test)) == {0, 1}  # the test set filtered by prepare
