"""The measurement protocol: training rule, f0 convention, per-seed data subsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntklab.config import KernelConfig, TrainConfig, load_config
from ntklab.errors import ConfigError
from ntklab.experiments.common import regress_grid
from ntklab.experiments.units import entk_at_init, train_network
from ntklab.regress import KernelRegressor
from ntklab.run.context import RunContext
from ntklab.train import train

SMALL = [
    "data.num_samples=1000",
    "data.n_min=32",
    "data.n_max=128",
    "data.n_val=64",
    "data.n_test=100",
    "arch.width=8",
    "seeds=2",
]


@pytest.fixture(scope="module")
def ctx() -> RunContext:
    return RunContext(load_config(None, [*SMALL, "train.min_steps=60", "train.epochs=5"]), progress=False)


def test_each_seed_draws_its_own_nested_subsets(ctx: RunContext) -> None:
    a, b = ctx.seed_splits(0), ctx.seed_splits(1)
    pool = ctx.splits
    assert not np.array_equal(a.x_train[:128], b.x_train[:128])
    # a permutation of the same pool; validation and test shared
    assert sorted(a.labels_train.tolist()) == sorted(pool.labels_train.tolist())
    np.testing.assert_array_equal(a.x_test, b.x_test)
    np.testing.assert_array_equal(a.x_val, pool.x_val)
    # reproducible: the same seed index gives the same order in a new context
    again = RunContext(ctx.cfg, progress=False).seed_splits(1)
    np.testing.assert_array_equal(again.x_train[:64], b.x_train[:64])


def test_regression_with_f0_added_is_f0_plus_kernel_regression_on_the_residual(ctx: RunContext) -> None:
    s = ctx.seed_splits(0)
    k = entk_at_init(ctx, 64, 0)
    v = len(s.x_val)
    kc = KernelConfig(ridges=[1e-3])
    (rec,) = regress_grid(k["train"], k["cross"], s, [64], kc, f0=(k["f0_train"], k["f0_cross"]))
    reg = KernelRegressor([1e-3]).fit(k["train"], s.y_train[:64] - k["f0_train"])
    pred = k["f0_cross"][v:] + reg.predict(k["cross"][v:])
    assert rec["test_mse"] == pytest.approx(float(((pred - s.y_test) ** 2).sum(1).mean()), rel=1e-12)
    (plain,) = regress_grid(k["train"], k["cross"], s, [64], kc)
    assert plain["test_mse"] != pytest.approx(rec["test_mse"], rel=1e-6)  # f0 is not zero


def test_centered_is_the_default_and_added_is_recorded() -> None:
    assert load_config(None, []).train.center_output
    assert load_config(None, ["train.center_output=false"]).train.center_output is False


def test_full_mode_is_refused_in_data_scaling() -> None:
    with pytest.raises(ConfigError, match="kernel.mode must be trace, logit-sum or single, not full"):
        load_config(None, ["kernel.mode='full'"])


def test_early_stopping_keeps_the_best_validation_weights() -> None:
    """A regression whose validation targets are the negated training targets: training makes
    validation worse from the start, so early stopping stops and returns the init weights."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g)
    y = x[:, :1] * 2.0
    net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    cfg = TrainConfig(optimizer="adam", lr=0.05, steps=200, early_stopping=True, evals=20, patience=0.2)
    res = train(
        net,
        x,
        y,
        torch.zeros(64, dtype=torch.long),
        cfg,
        seed=0,
        val=(x, -y, torch.zeros(64, dtype=torch.long)),
    )
    assert res.best_step == 0 and res.steps == 40 and res.stopped_early and res.planned_steps == 200
    with torch.no_grad():
        assert float(res.model(x).abs().max()) == 0.0  # centered: the init weights give f - f0 = 0
    # validation that agrees with training: no early stop, the kept weights are the last ones
    res = train(
        net,
        x,
        y,
        torch.zeros(64, dtype=torch.long),
        cfg,
        seed=0,
        val=(x, y, torch.zeros(64, dtype=torch.long)),
    )
    assert res.steps == 200 and not res.stopped_early and res.best_step >= 180


def test_network_records_how_it_trained(ctx: RunContext) -> None:
    r = train_network(ctx, 64, 0)
    assert {"steps", "planned_steps", "best_step", "train_loss", "still_falling"} <= set(r)
    assert r["planned_steps"] == 60 and 0 <= r["best_step"] <= r["steps"] <= 60
    assert np.isfinite(r["train_loss"]) and r["still_falling"] in (0.0, 1.0)


def test_still_falling_flags_a_dropping_loss_not_noise() -> None:
    from ntklab.train import TrainResult

    rng = np.random.default_rng(0)
    noisy = [{"step": s, "train_loss": 0.2 * (1 + 0.1 * rng.standard_normal())} for s in range(0, 1000, 10)]
    assert not TrainResult(None, history=noisy, steps=1000, planned_steps=1000).still_falling
    falling = [{"step": s, "train_loss": 1.0 - 0.0006 * s} for s in range(0, 1000, 10)]
    assert TrainResult(None, history=falling, steps=1000, planned_steps=1000).still_falling
    # ended by early stopping: validation said stop, so it is not flagged
    assert not TrainResult(None, history=falling, steps=1000, planned_steps=2000).still_falling


def test_networks_still_improving_on_validation_at_their_last_step_are_flagged() -> None:
    from ntklab.experiments.tidy import row, training_summary
    from ntklab.report.verdicts.comparisons import training

    def net(n: int, seed: int, steps: int, best: int, falling: float = 0.0) -> list[dict]:
        return [
            row("data-scaling", "nn", n, 8, seed, steps, "train_loss", 0.1),
            row("data-scaling", "nn", n, 8, seed, steps, "best_step", best),
            row("data-scaling", "nn", n, 8, seed, steps, "still_falling", falling),
        ]

    rows = [
        *net(512, 0, 1000, 950),  # kept weights from the last 10 %: still improving
        *net(512, 1, 1000, 900),  # exactly at 90 %: flagged too
        *net(1024, 0, 1000, 880),  # best before the last 10 %
        *net(64, 0, 383, 75),  # ended by early stopping
        *net(2048, 0, 3200, 3200, falling=1.0),
    ]
    tr = training_summary(rows, "rule.")
    assert tr["improving_at_end"] == [
        {"method": "nn", "n": 512, "seed": 0},
        {"method": "nn", "n": 512, "seed": 1},
        {"method": "nn", "n": 2048, "seed": 0},
    ]
    assert tr["still_falling"] == [{"method": "nn", "n": 2048, "seed": 0}]
    # without early stopping on validation the kept weights are the last ones: nothing to read
    assert training_summary(rows, "rule.", validated=False)["improving_at_end"] == []

    (verdict,) = training({"training": tr})
    assert verdict.status == "does-not-explain"
    assert "3 kept weights from the last 10 %" in verdict.text and "n = 512 seed 1" in verdict.text
    assert "raise train.epochs" in verdict.text
    calm = training_summary([*net(1024, 0, 1000, 880), *net(64, 0, 383, 75)], "rule.")
    (verdict,) = training({"training": calm})
    assert verdict.status == "info" and calm["improving_at_end"] == calm["still_falling"] == []
