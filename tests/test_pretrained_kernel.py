"""Experiment ``pretrained-kernel`` and its after-kernel unit."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ntklab.cli import main
from ntklab.config import load_config
from ntklab.errors import ConfigError
from ntklab.experiments import pretrained_kernel
from ntklab.experiments.after_kernel import after_kernel
from ntklab.experiments.units import entk_at_init, train_network
from ntklab.kernels.metrics import kernel_distance
from ntklab.run.context import RunContext

SMALL = [
    "experiment=pretrained-kernel",
    "data.num_samples=1000",
    "data.n_min=32",
    "data.n_max=128",
    "data.n_val=32",
    "data.n_test=100",
    "arch.width=8",
    "train.steps=30",
    "train.early_stopping=false",
    "fit.bootstrap=50",
    "pretrained.n0=[64]",
]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """Unit functions run with one torch thread, as every executor runs them (and a shared
    machine's oversubscribed cores do not slow the tests down)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_args() -> list[str]:
    args = [a for s in [*SMALL, "seeds=2", "pretrained.n0=[32, 64]"] for a in ("--set", s)]
    return [*args, "-q"]


@pytest.fixture(scope="module")
def ctx() -> RunContext:
    return RunContext(load_config(None, SMALL), progress=False)


def test_tiny_pretrained_kernel_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *tiny_args()]) == 0
    for name in ("results.csv", "summary.json", "pretrained_kernel.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["experiment"] == "pretrained-kernel"
    names = {"nn", "entk", "ntk", "after_kernel@n0=32", "after_kernel@n0=64", "after_kernel@n0=n"}
    assert set(summary["exponents"]) == names
    for m, e in summary["exponents"].items():
        assert np.isfinite(e["alpha"]) and e["fit_n_max"] == 128
        # the fixed-n0 after-kernel is fitted on n >= n0 only; 2 seeds x 2 points leave no CI
        assert e["fit_n_min"] == (64 if m == "after_kernel@n0=64" else 32)
        if m == "after_kernel@n0=64":
            assert e["ci_low"] is None and e["ci_high"] is None
        else:
            assert e["ci_low"] <= e["alpha"] <= e["ci_high"]
    after = {m for m in names if m.startswith("after_kernel@")}
    assert set(summary["differences"]) == {f"nn-{m}" for m in names - {"nn"}} | {f"entk-{m}" for m in after}
    assert summary["differences"]["nn-after_kernel@n0=64"]["fit_n_min"] == 64
    assert summary["f0"] == "centered"
    assert set(summary["alpha_minus_nn"]) == names - {"nn", "entk", "ntk"}
    assert set(summary["mean_loss"]) == names and set(summary["mean_loss"]["nn"]) == {"32", "64", "128"}
    assert summary["pretrain_steps"] == {"32": 30, "64": 30}
    assert all(v > 0 for v in summary["kernel_distance_to_init"].values())
    # pre-trained on n0 = 64 with the network's training length: the network of `nn` at 64
    assert summary["pretrained_test_loss"]["after_kernel@n0=64"] == summary["mean_loss"]["nn"]["64"]

    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["experiment", "method", "n", "width", "seed", "step", "metric", "value"]
    for m in names:
        sel = [r for r in rows if r["method"] == m and r["metric"] == "test_mse"]
        assert sorted({int(r["n"]) for r in sel}) == [32, 64, 128], m
    assert any(r["method"] == "after_kernel@n0=32" and r["metric"] == "pretrain_test_mse" for r in rows)


def test_after_kernel_at_step_zero_is_the_entk_at_init(ctx: RunContext) -> None:
    ak = after_kernel(ctx, n0=64, n=96, seed_index=1, steps=0)
    init = entk_at_init(ctx, 96, 1)
    assert ak["train"].shape == (96, 96) and ak["cross"].shape == (132, 96)
    assert np.array_equal(ak["train"], init["train"])
    assert np.array_equal(ak["cross"], init["cross"])


def test_after_kernel_moves_and_is_reproducible(ctx: RunContext) -> None:
    a = after_kernel(ctx, n0=64, n=64, seed_index=0, steps=30)
    b = after_kernel(ctx, n0=64, n=64, seed_index=0, steps=30)
    init = entk_at_init(ctx, 64, 0)
    assert kernel_distance(a["train"], init["train"]) > 1e-4
    assert np.array_equal(a["train"], b["train"]) and np.array_equal(a["cross"], b["cross"])
    assert a["test_mse"] == b["test_mse"]
    # same init and batch seeds as train_network: the grown variant's net is nn's net
    assert a["test_mse"] == train_network(ctx, 64, 0)["test_mse"]


def test_centered_after_kernel_excludes_the_frozen_copy() -> None:
    ctx = RunContext(load_config(None, [*SMALL, "train.center_output=true", "train.lr=0.1"]), progress=False)
    ak = after_kernel(ctx, n0=32, n=48, seed_index=0, steps=0)
    init = entk_at_init(ctx, 48, 0)
    np.testing.assert_allclose(ak["train"], init["train"], rtol=1e-10, atol=0)
    moved = after_kernel(ctx, n0=32, n=48, seed_index=0, steps=20)
    assert kernel_distance(moved["train"], init["train"]) > 1e-4


def test_pretrain_length_and_config() -> None:
    cfg = load_config(None, ["experiment=pretrained-kernel"])
    assert cfg.pretrained.n0 == [256] and cfg.pretrained.grow
    assert max(cfg.data.n_grid()) >= 4 * 256  # the fixed-n0 exponent is fitted on n >= n0
    assert cfg.pretrain_steps(256) == cfg.train.total_steps(256) == cfg.train.min_steps
    # epochs: ceil(epochs * n0 / min(batch, n0)) steps
    cfg = load_config(None, ["experiment=pretrained-kernel", "pretrained.epochs=2", "train.batch_size=128"])
    assert cfg.pretrain_steps(1024) == 16 and cfg.pretrain_steps(64) == 2 and cfg.pretrain_steps(100) == 2
    cfg = load_config(None, ["experiment=pretrained-kernel", "pretrained.steps=0"])
    assert cfg.pretrain_steps(512) == 0
    with pytest.raises(ConfigError, match="at most one of pretrained.epochs and pretrained.steps"):
        load_config(None, ["experiment=pretrained-kernel", "pretrained.epochs=2", "pretrained.steps=5"])
    with pytest.raises(ConfigError, match="kernel.mode"):
        load_config(None, ["experiment=pretrained-kernel", "kernel.mode='full'"])
    # one unit per (n0, seed) plus, with grow, one per (n, seed)
    cfg = load_config(None, [*SMALL, "seeds=2", "pretrained.n0=[32, 64]"])
    with pytest.raises(ConfigError, match="pretrained.n0 = 128 leaves fewer than 2 grid points"):
        load_config(None, [*SMALL, "pretrained.n0=[128]"])
    kinds = [u.kind for u in pretrained_kernel.plan(cfg)]
    assert kinds.count("after-kernel") == 2 * (2 + 3)
    no_grow = load_config(None, [*SMALL, "seeds=2", "pretrained.grow=false"])
    assert [u.kind for u in pretrained_kernel.plan(no_grow)].count("after-kernel") == 2
