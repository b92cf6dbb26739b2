"""Experiment ``width-scaling``: a tiny run through the CLI, the summary contract, the config."""

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
from ntklab.experiments import data_scaling, width_scaling

TINY = [
    "--set",
    "experiment=width-scaling",
    "--set",
    "data.num_samples=1000",
    "--set",
    "data.n_min=32",
    "--set",
    "data.n_max=128",
    "--set",
    "data.n_val=32",
    "--set",
    "data.n_test=100",
    "--set",
    "seeds=3",
    "--set",
    "train.steps=30",
    "--set",
    "widths=[8, 16]",
    "--set",
    "probe_widths=[512]",
    "--set",
    "probe_size=64",
    "--set",
    "fit.bootstrap=50",
    "-q",
]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """Unit functions run with one torch thread, as every executor runs them (and a shared
    machine's oversubscribed cores do not slow the tests down)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_tiny_width_scaling_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *TINY]) == 0
    for name in (
        "results.csv",
        "summary.json",
        "width_scaling.png",
        "alpha_vs_width.png",
        "entk_ntk_distance.png",
    ):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["experiment"] == "width-scaling"
    assert set(summary["exponents"]) == {"nn@w8", "nn@w16", "entk@w8", "entk@w16", "ntk"}
    for e in summary["exponents"].values():
        assert np.isfinite(e["alpha"]) and e["ci_low"] <= e["alpha"] <= e["ci_high"]
    assert summary["figures"] == ["width_scaling.png", "alpha_vs_width.png", "entk_ntk_distance.png"]

    # eNTK -> NTK distance: string width keys; it shrinks with the width (about w^-1/2)
    d = summary["entk_to_ntk_distance"]
    assert list(d) == ["8", "16", "512"]
    assert all(v > 0 for v in d.values())
    assert d["512"] < d["16"] and d["512"] < d["8"]
    slope = summary["entk_to_ntk_distance_slope"]
    assert slope["slope"] < 0 and slope["ci_low"] <= slope["slope"] <= slope["ci_high"]

    assert set(summary["test_loss_at_n_max"]) == {"nn@w8", "nn@w16", "entk@w8", "entk@w16", "ntk"}
    assert set(summary["per_width"]) == {"8", "16"}
    assert {"alpha_nn", "alpha_entk", "entk_to_ntk_distance"} <= set(summary["per_width"]["16"])
    # each width's learning rate chosen on validation from the grid, and used by its networks
    for w in ("8", "16"):
        chosen = summary["per_width"][w]["lr"]
        assert chosen in (0.01, 0.03, 0.1) and len(summary["per_width"][w]["lr_val_loss"]) == 3
        v = summary["per_width"][w]["lr_val_loss"]
        assert v[str(chosen)] == min(v.values())
    assert {"nn@w16-entk@w16", "nn@w16-ntk", "nn@w8-entk@w8", "nn@w8-ntk"} == set(summary["differences"])
    assert summary["probe_widths"] == [512] and summary["n_grid"] == [32, 64, 128]

    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["experiment", "method", "n", "width", "seed", "step", "metric", "value"]
    nn16 = [r for r in rows if r["method"] == "nn@w16" and r["metric"] == "test_mse"]
    assert sorted({int(r["n"]) for r in nn16}) == [32, 64, 128] and {r["width"] for r in nn16} == {"16"}
    dist = [r for r in rows if r["metric"] == "entk_to_ntk_distance"]
    assert len(dist) == 3 * 3 and {r["n"] for r in dist} == {"64"}

    # a re-run computes nothing
    assert main(["run", "--out", str(out), *TINY]) == 0
    assert json.loads((out / "summary.json").read_text())["units"]["computed"] == 0


def test_defaults_and_section_merge() -> None:
    cfg = load_config(None, ["experiment=width-scaling"])
    assert cfg.widths == [16, 32, 64] and cfg.probe_widths == [128, 256, 512, 1024]
    assert cfg.methods == ["nn", "entk", "ntk"] and cfg.seeds == 2
    assert (cfg.data.n_max, cfg.data.n_test, cfg.train.epochs, cfg.train.min_steps) == (1024, 500, 100, 600)
    assert cfg.train.early_stopping and cfg.lr_grid == [0.01, 0.03, 0.1]
    # naming one key of a section keeps the experiment's other section defaults
    cfg = load_config(None, ["experiment=width-scaling", "data.n_test=100", "train.lr=0.1"])
    assert (cfg.data.n_max, cfg.data.n_test, cfg.train.min_steps, cfg.train.lr) == (1024, 100, 600, 0.1)
    # widths are sorted; a probe width that is also a full width is measured once
    cfg = load_config(None, ["experiment=width-scaling", "widths=[64, 16, 64]", "probe_widths=[16, 256]"])
    assert cfg.widths == [16, 64] and cfg.probe_widths == [256]


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (["probe_size=4096"], ["probe_size (4096)", "data.n_max"]),
        (["arch.layers=[{type = 'dense', width = 10}]"], ["arch.layers"]),
        (["arch.parameterization='standard'"], ["parameterization"]),
        (["kernel.mode='full'"], ["kernel.mode"]),
    ],
)
def test_config_errors(overrides: list[str], words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["experiment=width-scaling", *overrides])
    for w in words:
        assert w in str(err.value)


def test_standard_parameterization_without_infinite_kernels_plans_no_distance() -> None:
    cfg = load_config(
        None, ["experiment=width-scaling", "arch.parameterization='standard'", "methods=['nn', 'entk']"]
    )
    kinds = {u.kind for u in width_scaling.plan(cfg)}
    assert kinds == {"train", "entk"}
    assert not any("probe" in u.label for u in width_scaling.plan(cfg))


def test_units_shared_with_data_scaling() -> None:
    """At arch.width, width-scaling plans the very units of data-scaling (one stored result)."""
    same = [
        "data.n_max=1024",
        "data.n_val=128",
        "data.n_test=500",
        "seeds=2",
        "train.optimizer='sgd'",
        "train.lr=0.5",
        "train.batch_size=32",
        "train.min_steps=1000",
    ]
    # with a fixed lr (no lr_grid) the networks are data-scaling's too
    ws = load_config(None, ["experiment=width-scaling", "widths=[16, 32]", "lr_grid=[]", *same])
    ds = load_config(None, ["experiment=data-scaling", *same])
    ws_keys = {u.key for u in width_scaling.plan(ws)}
    ds_units = data_scaling.plan(ds)
    assert ds_units and all(u.key in ws_keys for u in ds_units if u.kind in ("train", "entk"))
    # the infinite kernels do not depend on the width in the ntk parameterization
    for i in range(2):
        assert [u.key for u in data_scaling.infinite_units(ds, 1024, i)] == [
            u.key for u in width_scaling.reference_units(ws, i)
        ]
    # with the lr chosen per width on validation, the eNTKs are still shared, the networks not
    tuned = load_config(None, ["experiment=width-scaling", "widths=[16, 32]", *same])
    plan = width_scaling.plan(tuned)
    keys = {u.key for u in plan}
    assert all(u.key in keys for u in ds_units if u.kind == "entk")
    nets = [u for u in plan if u.fn.endswith(":train_network")]
    assert nets and all(u.after == (u.args["lr_from"],) and u.args["lr_from"] in keys for u in nets)
