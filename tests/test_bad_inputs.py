"""Bad values in a user's data stop every command before any work: one sentence, exit 2.

Each case is a small ``.npz`` with one thing wrong. ``ntklab run`` (and ``ntklab explain``, which
reads the same file through the same checks) must print one line naming the array and, where it
applies, the row, without a traceback, and must leave the unit store exactly as it was.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from ntklab.cli import main
from ntklab.divergence import nan_loss_message
from ntklab.run.store import Store

N, T, D = 64, 16, 5


def good() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.normal(size=(N, D)).astype(np.float32),
        "y_train": rng.integers(0, 3, N),
        "x_test": rng.normal(size=(T, D)).astype(np.float32),
        "y_test": rng.integers(0, 3, T),
    }


def with_(**changes: Callable[[dict[str, np.ndarray]], np.ndarray]) -> dict[str, np.ndarray]:
    d = good()
    d.update({k: f(d) for k, f in changes.items()})
    return d


def nan_row(a: np.ndarray, row: int) -> np.ndarray:
    a = a.copy()
    a[row, 1] = np.nan
    return a


def label(y: np.ndarray, row: int, value: int) -> np.ndarray:
    y = y.copy()
    y[row] = value
    return y


CASES = {
    "empty x_train": (
        with_(x_train=lambda d: d["x_train"][:0], y_train=lambda d: d["y_train"][:0]),
        "x_train is empty (no samples); the training and the test split each need at least one sample",
    ),
    "empty x_test": (
        with_(x_test=lambda d: d["x_test"][:0], y_test=lambda d: d["y_test"][:0]),
        "x_test is empty",
    ),
    "label 10^9": (
        with_(y_train=lambda d: label(d["y_train"], 7, 10**9)),
        "y_train row 7 holds label 1000000000; class labels must be integers 0..C-1 with C at most 10000",
    ),
    "negative label": (
        with_(y_test=lambda d: label(d["y_test"], 2, -1)),
        "y_test row 2 holds label -1",
    ),
    "float targets": (
        with_(y_train=lambda d: d["y_train"].astype(np.float64), y_test=lambda d: d["y_test"] * 0.5),
        "y_train holds float64 values; ntklab needs integer class labels 0..C-1",
    ),
    "NaN input": (
        with_(x_train=lambda d: nan_row(d["x_train"], 13)),
        "x_train row 13 holds NaN or inf; every input must be a finite number",
    ),
    "beyond float32": (
        with_(x_test=lambda d: np.where(np.arange(T)[:, None] == 5, 1e39, d["x_test"].astype(np.float64))),
        "x_test row 5 holds 1e+39, beyond the float32 range",
    ),
    "shapes differ": (
        with_(x_test=lambda d: np.zeros((T, D + 1), np.float32)),
        "x_train samples (5,) and x_test samples (6,) differ in shape",
    ),
    "text inputs": (
        with_(x_train=lambda d: d["x_train"].astype(str)),
        "x_train holds <U",
    ),
}


def run_args(path: Path, out: Path) -> list[str]:
    sets = ["data.name='npz'", f"data.path='{path}'", "data.n_min=16", "data.n_max=32", "data.n_val=8"]
    sets += ["data.n_test=8", "seeds=1", "train.steps=5", "arch.name='mlp'", "device='cpu'"]
    return ["run", "--out", str(out), "--workers", "1", "-q", *[a for s in sets for a in ("--set", s)]]


@pytest.fixture
def store_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Store, bytes]:
    """A store that already holds one entry (it must survive every failed run untouched)."""
    monkeypatch.setenv("NTKLAB_CACHE_DIR", str(tmp_path / "cache"))
    store = Store(tmp_path / "cache" / "units")
    store.save("cd" * 12, {"kernel": np.eye(3)})
    return store, store.path("cd" * 12).read_bytes()


@pytest.mark.parametrize("case", list(CASES))
def test_bad_data_is_one_sentence_before_any_work(
    case: str,
    tmp_path: Path,
    store_before: tuple[Store, bytes],
    capsys: pytest.CaptureFixture[str],
) -> None:
    arrays, message = CASES[case]
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    capsys.readouterr()
    assert main(run_args(path, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"ntklab: error: data file {path}: ") and message in lines[0], lines[0]
    assert "Traceback" not in err
    store, entry = store_before
    entries = [p for p in store.root.rglob("*") if p.is_file() and p.name != "STORE_ID"]
    assert entries == [store.path("cd" * 12)] and entries[0].read_bytes() == entry
    assert not (tmp_path / "run").exists()  # stopped before the run directory was made


def test_explain_checks_the_same_way(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arrays, message = CASES["NaN input"]
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    args = ["explain", "--arch", "mlp", "--data", str(path), "--out", str(tmp_path / "ex"), "-q"]
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_nan_loss_names_the_likely_cause() -> None:
    fine = torch.randn(8, 5)
    assert "learning rate is the likely cause; lower train.lr (now 100)" in nan_loss_message(
        math.nan, 12, fine, 100.0
    )
    huge = fine * 1e30
    msg = nan_loss_message(math.inf, 0, huge, 0.01)
    assert "scale is the likely cause, not the learning rate" in msg and "e+30" in msg
    at_start = nan_loss_message(math.nan, 0, fine, 0.01)
    assert "before any update, so the learning rate is not the cause" in at_start
    bad = fine.clone()
    bad[3, 1] = math.inf
    assert "inputs hold NaN or inf" in nan_loss_message(math.nan, 4, bad, 0.01)


def test_training_on_huge_inputs_blames_the_inputs() -> None:
    from ntklab.config import TrainConfig
    from ntklab.train import train

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    x = torch.randn(32, 5) * 1e30
    y = torch.ones(32, 3)  # the centered network starts at 0: a nonzero loss, a huge gradient
    labels = torch.zeros(32, dtype=torch.long)
    with pytest.raises(FloatingPointError, match="scale is the likely cause"):
        train(model, x, y, labels, TrainConfig(steps=5), seed=0, progress=False)
