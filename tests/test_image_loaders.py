"""Image loaders in the official on-disk formats, and ZCA whitening."""

from __future__ import annotations

import gzip
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from ntklab.data.images import (
    load_cifar5m,
    load_cifar10,
    load_fashion_mnist,
    load_mnist,
    load_svhn,
)
from ntklab.data.zca import fit_zca
from ntklab.errors import ConfigError, DataError
from tiny import make_cifar5m

BATCHES = [f"data_batch_{i}" for i in range(1, 6)]


@pytest.fixture
def cifar_subset(cifar10) -> Path:
    """The folder holding the test CIFAR-10's ``cifar-10-batches-py`` (written by conftest)."""
    return cifar10.folder.parent


@pytest.fixture
def cifar_copy(cifar_subset: Path, tmp_path: Path) -> Path:
    """A writable copy of the ``cifar-10-batches-py`` folder."""
    dst = tmp_path / "cifar-10-batches-py"
    shutil.copytree(cifar_subset / "cifar-10-batches-py", dst)
    return dst


def raw_batch(folder: Path, name: str) -> dict:
    with open(folder / name, "rb") as f:
        return pickle.load(f, encoding="bytes")


def assert_one_sentence(exc: pytest.ExceptionInfo[DataError], culprit: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.endswith(".")
    assert culprit in msg


def write_mat(file: Path, x_hwcn: np.ndarray, y: np.ndarray) -> None:
    scipy.io.savemat(file, {"X": x_hwcn, "y": y.reshape(-1, 1).astype(np.uint8)})


# ------------------------------------------------------------------------------ CIFAR-10


def test_cifar10_official_folder(cifar_subset: Path, cifar10) -> None:
    folder = cifar_subset / "cifar-10-batches-py"
    for path in (folder, cifar_subset, str(folder)):
        ds = load_cifar10(path)
        assert ds.name == "cifar10"
        assert ds.x_train.shape == (500, 3, 32, 32)
        assert ds.x_test.shape == (200, 3, 32, 32)
        assert ds.x_train.dtype == ds.x_test.dtype == np.float32
        assert ds.y_train.dtype == ds.y_test.dtype == np.int64
        assert ds.num_classes == 10
    raw = [raw_batch(folder, n) for n in BATCHES]
    raw_train = np.concatenate([np.asarray(b[b"labels"]) for b in raw])
    raw_test = np.asarray(raw_batch(folder, "test_batch")[b"labels"])
    np.testing.assert_array_equal(ds.y_train, raw_train)
    np.testing.assert_array_equal(ds.y_test, raw_test)
    np.testing.assert_array_equal(ds.y_train, cifar10.y_train)
    np.testing.assert_array_equal(ds.x_train, cifar10.x_train / np.float32(255))
    np.testing.assert_array_equal(ds.x_test, cifar10.x_test / np.float32(255))
    # Layout: 1024 R, 1024 G, 1024 B, each row-major 32x32; values / 255.
    first = raw[1][b"data"][0].reshape(3, 32, 32).astype(np.float32) / 255
    np.testing.assert_array_equal(ds.x_train[100], first)
    # Image 0 of data_batch_2 (file 1) starts its red plane with 1, 0, label 1; test image 3
    # (file 5) with 5, 3, label (3*3 + 5) % 10 = 4.
    assert ds.y_train[100] == 1 and ds.y_test[3] == 4
    np.testing.assert_array_equal(np.rint(ds.x_train[100, 0, 0, :3] * 255), [1, 0, 1])
    np.testing.assert_array_equal(np.rint(ds.x_test[3, 0, 0, :3] * 255), [5, 3, 4])
    assert ds.x_train.min() >= 0 and ds.x_train.max() <= 1
    assert ds.class_names is not None and ds.class_names[4] == "deer"
    assert ds.class_names[0] == "airplane" and ds.class_names[9] == "truck"


def test_cifar10_n_train_reads_only_needed_batches(cifar_copy: Path) -> None:
    ds = load_cifar10(cifar_copy, n_train=150)
    assert ds.x_train.shape == (150, 3, 32, 32)
    assert ds.x_test.shape == (200, 3, 32, 32)
    # Batches 3..5 (100 images each) are not needed for 150 images: deleting them changes nothing.
    for name in BATCHES[2:]:
        (cifar_copy / name).unlink()
    again = load_cifar10(cifar_copy, n_train=150)
    np.testing.assert_array_equal(again.x_train, ds.x_train)
    with pytest.raises(DataError) as exc:
        load_cifar10(cifar_copy)
    assert_one_sentence(exc, "data_batch_3")


def test_cifar10_tar_gz(cifar_subset: Path, tmp_path: Path) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        tar.add(cifar_subset / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    from_dir = load_cifar10(cifar_subset)
    for path in (archive, tmp_path):
        ds = load_cifar10(path)
        np.testing.assert_array_equal(ds.x_train, from_dir.x_train)
        np.testing.assert_array_equal(ds.y_test, from_dir.y_test)
        assert ds.class_names == from_dir.class_names
    assert load_cifar10(archive, n_train=150).x_train.shape == (150, 3, 32, 32)
    assert not (tmp_path / "cifar-10-batches-py").exists()  # nothing extracted

    truncated = tmp_path / "short" / "cifar-10-python.tar.gz"
    truncated.parent.mkdir()
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError) as exc:
        load_cifar10(truncated)
    assert_one_sentence(exc, str(truncated))


def test_cifar10_wrong_path(tmp_path: Path) -> None:
    for path in (tmp_path / "nope", tmp_path):
        with pytest.raises(DataError) as exc:
            load_cifar10(path)
        assert_one_sentence(exc, str(path))
        assert "cifar-10-python.tar.gz" in str(exc.value)


def test_cifar10_truncated_batch(cifar_copy: Path) -> None:
    victim = cifar_copy / "data_batch_2"
    victim.write_bytes(victim.read_bytes()[:100_000])
    with pytest.raises(DataError) as exc:
        load_cifar10(cifar_copy)
    assert_one_sentence(exc, str(victim))
    assert "truncated" in str(exc.value)
    assert load_cifar10(cifar_copy, n_train=100).x_train.shape[0] == 100


def test_cifar10_svhn_mat_given_as_cifar(cifar_copy: Path, tmp_path: Path) -> None:
    mat = tmp_path / "train_32x32.mat"
    rng = np.random.default_rng(0)
    write_mat(mat, rng.integers(0, 256, (32, 32, 3, 4), dtype=np.uint8), np.arange(1, 5))
    with pytest.raises(DataError) as exc:
        load_cifar10(mat)
    assert_one_sentence(exc, str(mat))
    shutil.copyfile(mat, cifar_copy / "data_batch_1")
    with pytest.raises(DataError) as exc:
        load_cifar10(cifar_copy)
    assert_one_sentence(exc, str(cifar_copy / "data_batch_1"))


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_wrong_shape_and_labels(cifar_copy: Path, protocol: int) -> None:
    victim = cifar_copy / "test_batch"
    good = np.zeros((5, 3072), np.uint8)
    cases = [
        ({b"data": np.zeros((5, 1024), np.uint8), b"labels": [0] * 5}, "(N, 3072)"),
        ({b"data": good.astype(np.float32), b"labels": [0] * 5}, "(N, 3072)"),
        ({b"data": good, b"labels": [0] * 4}, "labels of shape (4,)"),
        ({b"data": good, b"labels": [0, 1, 2, 3, 10]}, "0..9"),
        ({b"data": good, b"fine_labels": [0] * 5}, "CIFAR-100"),
        ({b"pixels": good}, "keys"),
        ([1, 2, 3], "list"),
    ]
    for content, phrase in cases:
        victim.write_bytes(pickle.dumps(content, protocol=protocol))
        with pytest.raises(DataError) as exc:
            load_cifar10(cifar_copy)
        assert_one_sentence(exc, str(victim))
        assert phrase in str(exc.value)
    # A Python-3 re-pickle of a valid batch is read like the official file.
    victim.write_bytes(pickle.dumps({b"data": good, b"labels": [1] * 5}, protocol=protocol))
    ds = load_cifar10(cifar_copy)
    assert ds.x_test.shape == (5, 3, 32, 32) and list(ds.y_test) == [1] * 5


def test_cifar10_refuses_code_in_pickles(cifar_copy: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    victim = cifar_copy / "data_batch_1"
    victim.write_bytes(pickle.dumps(_Evil(str(marker))))
    with pytest.raises(DataError) as exc:
        load_cifar10(cifar_copy)
    assert_one_sentence(exc, str(victim))
    assert not marker.exists()


class _Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (Path.touch, (Path(self.path),))


def test_n_train_checks(cifar_subset: Path) -> None:
    with pytest.raises(DataError) as exc:
        load_cifar10(cifar_subset, n_train=501)
    assert_one_sentence(exc, "501")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ConfigError):
            load_cifar10(cifar_subset, n_train=bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ CIFAR-5m


def test_cifar5m_round_trip(tmp_path: Path) -> None:
    x, y = make_cifar5m(tmp_path, [7, 5, 6])
    expected = x.transpose(0, 3, 1, 2).astype(np.float32) / 255
    ds = load_cifar5m(tmp_path, n_test=4)
    assert ds.name == "cifar5m" and ds.class_names is not None and ds.class_names[3] == "cat"
    # Test = tail of the last part; train = everything before it, parts in order.
    np.testing.assert_array_equal(ds.x_test, expected[-4:])
    np.testing.assert_array_equal(ds.y_test, y[-4:])
    np.testing.assert_array_equal(ds.x_train, expected[:-4])
    np.testing.assert_array_equal(ds.y_train, y[:-4])
    assert ds.x_train.dtype == np.float32 and ds.x_train.flags.c_contiguous
    assert ds.y_train.dtype == np.int64

    part = load_cifar5m(tmp_path, n_train=9, n_test=4)
    np.testing.assert_array_equal(part.x_train, expected[:9])
    np.testing.assert_array_equal(part.x_test, ds.x_test)
    assert load_cifar5m(tmp_path, n_train=14, n_test=4).x_train.shape[0] == 14
    with pytest.raises(DataError):
        load_cifar5m(tmp_path, n_train=15, n_test=4)
    with pytest.raises(DataError) as exc:
        load_cifar5m(tmp_path, n_test=7)
    assert_one_sentence(exc, "part2.npz")


def test_cifar5m_bad_input(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        load_cifar5m(tmp_path, n_test=1)
    assert_one_sentence(exc, str(tmp_path))
    make_cifar5m(tmp_path, [3, 3, 3])
    (tmp_path / "part1.npz").unlink()
    with pytest.raises(DataError) as exc:
        load_cifar5m(tmp_path, n_test=1)
    assert_one_sentence(exc, "part1.npz")
    bad = tmp_path / "part1.npz"
    bad.write_bytes((tmp_path / "part0.npz").read_bytes()[:500])
    with pytest.raises(DataError) as exc:
        load_cifar5m(tmp_path, n_test=1)
    assert_one_sentence(exc, str(bad))
    np.savez(bad, X=np.zeros((3, 3, 32, 32), np.uint8), Y=np.zeros(3, np.int64))
    with pytest.raises(DataError) as exc:
        load_cifar5m(tmp_path, n_test=1)
    assert_one_sentence(exc, str(bad))


# ------------------------------------------------------------------------------ SVHN


def test_svhn_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x_tr = rng.integers(0, 256, (32, 32, 3, 9), dtype=np.uint8)
    y_tr = np.array([10, 1, 2, 3, 4, 5, 6, 7, 10])
    x_te = rng.integers(0, 256, (32, 32, 3, 4), dtype=np.uint8)
    y_te = np.array([9, 8, 10, 1])
    write_mat(tmp_path / "train_32x32.mat", x_tr, y_tr)
    write_mat(tmp_path / "test_32x32.mat", x_te, y_te)
    ds = load_svhn(tmp_path)
    assert ds.name == "svhn" and ds.class_names == tuple("0123456789")
    assert ds.x_train.shape == (9, 3, 32, 32) and ds.x_train.dtype == np.float32
    np.testing.assert_array_equal(ds.y_train, [0, 1, 2, 3, 4, 5, 6, 7, 0])
    np.testing.assert_array_equal(ds.y_test, [9, 8, 0, 1])
    # x[n, c, h, w] == X[h, w, c, n] / 255
    assert ds.x_train[4, 2, 5, 7] == np.float32(x_tr[5, 7, 2, 4]) / 255
    np.testing.assert_array_equal(ds.x_test, x_te.transpose(3, 2, 0, 1) / np.float32(255))
    small = load_svhn(tmp_path, n_train=3)
    np.testing.assert_array_equal(small.x_train, ds.x_train[:3])


def test_svhn_bad_input(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        load_svhn(tmp_path)
    assert_one_sentence(exc, str(tmp_path))
    x = np.zeros((32, 32, 3, 2), np.uint8)
    write_mat(tmp_path / "train_32x32.mat", x, np.array([1, 2]))
    with pytest.raises(DataError) as exc:
        load_svhn(tmp_path)
    assert_one_sentence(exc, "test_32x32.mat")
    test = tmp_path / "test_32x32.mat"
    write_mat(test, x, np.array([1, 11]))
    with pytest.raises(DataError) as exc:
        load_svhn(tmp_path)
    assert_one_sentence(exc, str(test))
    scipy.io.savemat(test, {"X": np.zeros((28, 28, 2), np.uint8), "y": np.ones((2, 1))})
    with pytest.raises(DataError) as exc:
        load_svhn(tmp_path)
    assert_one_sentence(exc, str(test))
    test.write_bytes(b"this is not a mat file" * 10)
    with pytest.raises(DataError) as exc:
        load_svhn(tmp_path)
    assert_one_sentence(exc, str(test))


# ------------------------------------------------------------------------------ MNIST


def idx_bytes(array: np.ndarray) -> bytes:
    magic = 0x0800 | array.ndim
    dims = np.asarray(array.shape, dtype=">u4").tobytes()
    return magic.to_bytes(4, "big") + dims + array.astype(np.uint8).tobytes()


def write_idx_set(folder: Path, n_train: int, n_test: int, gz: bool, seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(arr)))
        else:
            (folder / name).write_bytes(idx_bytes(arr))
    return tuple(arrays.values())


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_round_trip(tmp_path: Path, gz: bool) -> None:
    xtr, ytr, xte, yte = write_idx_set(tmp_path, 12, 5, gz)
    ds = load_mnist(tmp_path)
    assert ds.name == "mnist" and ds.class_names == tuple("0123456789")
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_train.dtype == np.float32
    np.testing.assert_array_equal(ds.x_train[:, 0], xtr / np.float32(255))
    np.testing.assert_array_equal(ds.x_test[:, 0], xte / np.float32(255))
    np.testing.assert_array_equal(ds.y_train, ytr)
    np.testing.assert_array_equal(ds.y_test, yte)
    assert ds.y_train.dtype == np.int64
    small = load_mnist(tmp_path, n_train=4)
    np.testing.assert_array_equal(small.x_train, ds.x_train[:4])
    np.testing.assert_array_equal(small.y_train, ds.y_train[:4])
    with pytest.raises(DataError):
        load_mnist(tmp_path, n_train=13)


def test_fashion_mnist_torchvision_layout(tmp_path: Path) -> None:
    write_idx_set(tmp_path / "FashionMNIST" / "raw", 6, 3, gz=True)
    ds = load_fashion_mnist(tmp_path)
    assert ds.name == "fashion_mnist" and ds.x_train.shape == (6, 1, 28, 28)
    assert ds.class_names is not None and len(ds.class_names) == 10
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"


def test_mnist_bad_input(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        load_mnist(tmp_path)
    assert_one_sentence(exc, str(tmp_path))
    write_idx_set(tmp_path, 8, 3, gz=False)
    images = tmp_path / "train-images-idx3-ubyte"
    labels = tmp_path / "train-labels-idx1-ubyte"
    good = images.read_bytes()
    images.write_bytes(good[: len(good) - 100])
    with pytest.raises(DataError) as exc:
        load_mnist(tmp_path)
    assert_one_sentence(exc, str(images))
    assert "truncated" in str(exc.value)
    # Enough of the file is there for the first 2 images.
    assert load_mnist(tmp_path, n_train=2).x_train.shape == (2, 1, 28, 28)
    images.write_bytes(labels.read_bytes())  # a labels file where images belong
    with pytest.raises(DataError) as exc:
        load_mnist(tmp_path)
    assert_one_sentence(exc, str(images))
    assert "2049" in str(exc.value)
    images.write_bytes(good)
    labels.write_bytes(idx_bytes(np.zeros(7, np.uint8)))  # 7 labels for 8 images
    with pytest.raises(DataError) as exc:
        load_mnist(tmp_path)
    assert_one_sentence(exc, str(labels))
    labels.unlink()
    with pytest.raises(DataError) as exc:
        load_mnist(tmp_path)
    assert_one_sentence(exc, "train-labels-idx1-ubyte")
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(DataError) as exc:
        load_mnist(tmp_path)
    assert_one_sentence(exc, "train-labels-idx1-ubyte.gz")


# ------------------------------------------------------------------------------ ZCA


def test_zca_whitens_training_data() -> None:
    rng = np.random.default_rng(0)
    n, shape = 2000, (2, 3, 4)  # D = 24 < N
    d = int(np.prod(shape))
    mixing = rng.normal(size=(d, d)) * np.linspace(0.1, 5.0, d)
    x_train = (rng.normal(size=(n, d)) @ mixing + 3.0).reshape(n, *shape).astype(np.float32)
    zca = fit_zca(x_train, reg=1e-10)
    assert zca.mean.dtype == zca.matrix.dtype == np.float64
    assert zca.matrix.shape == (d, d)
    np.testing.assert_allclose(zca.matrix, zca.matrix.T)
    z = zca.transform(x_train)
    assert z.shape == x_train.shape and z.dtype == np.float32
    flat = z.reshape(n, d).astype(np.float64)
    np.testing.assert_allclose(flat.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(flat.T @ flat / n, np.eye(d), atol=1e-3)
    # A larger reg shrinks the whitened variance below one.
    strong = fit_zca(x_train, reg=1.0).transform(x_train).reshape(n, d)
    assert np.all(strong.var(axis=0) < 1)


def test_zca_fitted_on_train_only() -> None:
    rng = np.random.default_rng(1)
    x_train = rng.normal(size=(300, 10))
    x_test = rng.normal(size=(50, 10)) + 7.0
    zca = fit_zca(x_train, reg=1e-3)
    matrix, mean = zca.matrix.copy(), zca.mean.copy()
    z_test = zca.transform(x_test)
    zca.transform(x_test * 100 - 5)
    np.testing.assert_array_equal(zca.matrix, matrix)
    np.testing.assert_array_equal(zca.mean, mean)
    # Each test row is whitened with the training statistics, independently of the others.
    np.testing.assert_allclose(z_test, (x_test - mean) @ matrix, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(zca.transform(x_test[:1]), z_test[:1], rtol=1e-6)
    with pytest.raises(ValueError):
        zca.matrix[0, 0] = 1.0  # read-only


def test_zca_errors() -> None:
    x = np.random.default_rng(2).normal(size=(5, 8))  # D > N: singular covariance
    with pytest.raises(DataError):
        fit_zca(x, reg=0.0)
    fit_zca(x, reg=1e-3)
    with pytest.raises(ConfigError):
        fit_zca(x, reg=-1.0)
    with pytest.raises(DataError) as exc:
        fit_zca(x, reg=0.1).transform(np.zeros((3, 9)))
    assert "\n" not in str(exc.value)
