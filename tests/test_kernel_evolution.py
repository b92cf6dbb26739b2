"""Experiment ``kernel-evolution``: metric cases not in test_metrics.py, checkpoints, velocity from
stored checkpoints vs during training, and a tiny end-to-end run through the CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ntklab.cli import main
from ntklab.config import load_config
from ntklab.errors import ConfigError
from ntklab.experiments import kernel_evolution as ke
from ntklab.experiments.common import batch_seed, init_model
from ntklab.experiments.evolution_units import checkpoint_kernels, probe_kernel
from ntklab.kernels import empirical_ntk
from ntklab.kernels.metrics import alignment, kernel_distance
from ntklab.run.context import RunContext
from ntklab.run.executors import unit_environment
from ntklab.train import lr_factor, steps_to_epochs, train

OVERRIDES = [
    "experiment=kernel-evolution",
    "data.num_samples=1000",
    "data.n_max=96",
    "data.n_val=32",
    "data.n_test=64",
    "evolution.n=96",
    "evolution.regress_n=64",
    "evolution.probe_train=24",
    "evolution.probe_test=16",
    "evolution.n_checkpoints=5",
    "evolution.top_eigenvalues=4",
    "arch.width=8",
    "train.steps=24",
    "train.batch_size=32",
    "train.lr=0.1",
    "train.schedule=step",
    "kernel.ridges=[0.0, 0.01]",
]
CLI = [a for o in OVERRIDES for a in ("--set", o)] + ["-q"]


# ----------------------------------------------------------------------------- metrics


def test_distance_is_one_for_orthogonal_psd_kernels() -> None:
    """The upper end of S's range [0, 1] is attained: PSD kernels with orthogonal supports."""
    a = np.diag([1.0, 2.0, 0.0, 0.0])
    b = np.diag([0.0, 0.0, 3.0, 1.0])
    assert kernel_distance(a, b) == 1.0
    assert kernel_distance(a, 2 * a + b) == pytest.approx(1 - 2 * 5 / (math.sqrt(5) * math.sqrt(4 * 5 + 10)))


def test_alignment_multi_output_by_hand() -> None:
    """Alignment with one-hot minus 1/C targets (the experiment's), by explicit H K H."""
    rng = np.random.default_rng(0)
    f = rng.normal(size=(7, 3))
    k = f @ f.T
    labels = np.array([0, 1, 2, 0, 1, 2, 2])
    y = np.eye(3)[labels] - 1 / 3
    h = np.eye(7) - np.ones((7, 7)) / 7
    kc, yc = h @ k @ h, h @ y @ y.T @ h
    expected = np.sum(kc * yc) / (np.linalg.norm(kc) * np.linalg.norm(yc))
    assert abs(alignment(k, y) - expected) < 1e-12
    # invariant to the kernel's scale and the targets' sign
    assert abs(alignment(5 * k, -y) - expected) < 1e-12


def test_velocities_by_hand() -> None:
    """S(diag(1,0), diag(1,1)) = 1 − 1/√2, the angle between them π/4; dt = 0.5 epoch."""
    a, b = np.diag([1.0, 0.0]), np.diag([1.0, 1.0])
    s = 1 - 1 / math.sqrt(2)
    assert ke.velocities([a, b, b], [0.0, 0.5, 1.5]) == pytest.approx([s / 0.5, 0.0], abs=1e-15)
    assert ke.angular_velocities([a, b], [0.0, 0.5]) == pytest.approx([(math.pi / 4) / 0.5], abs=1e-12)


def test_angular_velocity_does_not_depend_on_dt_for_steady_rotation() -> None:
    """A kernel rotating at a constant rate: ω is the rate for any dt, S / dt grows with dt."""
    u, v = np.diag([1.0, 0.0, 0.0]), np.diag([0.0, 1.0, 1.0]) / math.sqrt(2)

    def k(theta: float) -> np.ndarray:  # unit-norm kernels at angle theta from u
        return math.cos(theta) * u + math.sin(theta) * v

    rate = 0.1  # rad per epoch
    for dt in (0.5, 2.0, 8.0):
        (w,) = ke.angular_velocities([k(0.2), k(0.2 + rate * dt)], [0.0, dt])
        assert w == pytest.approx(rate, rel=1e-9)
    v_short = ke.velocities([k(0.2), k(0.2 + rate)], [0.0, 1.0])[0]
    v_long = ke.velocities([k(0.2), k(0.2 + 8 * rate)], [0.0, 8.0])[0]
    assert v_long > 5 * v_short


def test_velocity_fraction_by_hand() -> None:
    """Peak 10 → threshold 1: intervals 1, 2 and 4 (lengths 1, 1, 4 of 10 epochs) count."""
    vf = ke.velocity_fraction([10.0, 2.0, 0.5, 1.5], [0.0, 1.0, 2.0, 6.0, 10.0])
    assert vf["above"] == pytest.approx(0.6)
    assert vf["last"] == pytest.approx(1.0)
    assert vf["peak"] == 10.0 and vf["peak_epoch"] == 0.5
    vf = ke.velocity_fraction([10.0, 2.0, 0.5, 0.5], [0.0, 1.0, 2.0, 6.0, 10.0])
    assert vf["above"] == pytest.approx(0.2) and vf["last"] == pytest.approx(0.2)


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoints_log_spaced_with_ends() -> None:
    cfg = load_config(None, ["experiment=kernel-evolution"])
    steps = ke.checkpoint_steps(cfg)
    total = cfg.train.total_steps(cfg.evolution.n)
    assert steps[0] == 0 and steps[-1] == total and steps == sorted(set(steps))
    assert len(steps) == cfg.evolution.n_checkpoints
    explicit = load_config(None, ["experiment=kernel-evolution", "evolution.checkpoint_steps=[10, 100]"])
    assert ke.checkpoint_steps(explicit) == [0, 10, 100, total]
    with pytest.raises(ConfigError, match="after the end of training"):
        load_config(None, ["experiment=kernel-evolution", "evolution.checkpoint_steps=[99999]"])
    with pytest.raises(ConfigError, match="regress_n"):
        load_config(None, ["experiment=kernel-evolution", "evolution.regress_n=8192"])


def test_step_schedule_adds_checkpoints_around_each_lr_drop() -> None:
    cfg = load_config(None, ["experiment=kernel-evolution", "train.schedule=step", "train.steps=1000"])
    drops = [t for t in range(1, 1000) if lr_factor(cfg.train, t, 1000) < lr_factor(cfg.train, t - 1, 1000)]
    assert ke.milestone_steps(cfg) == drops == [500, 750]
    delta = round(cfg.evolution.milestone_window * 1000)
    steps = ke.checkpoint_steps(cfg)
    for t in drops:
        assert {t - delta, t, t + delta} <= set(steps)
        i = steps.index(t)  # the intervals just before and after the drop are δ long
        assert steps[i - 1] == t - delta and steps[i + 1] == t + delta
    assert ke.milestone_steps(load_config(None, ["experiment=kernel-evolution"])) == []


def test_kernel_units_survive_a_change_of_checkpoints() -> None:
    """The state at a step does not depend on which steps are kept: refining the checkpoints
    retrains, but kernels at steps already computed are reused."""
    a = load_config(None, OVERRIDES)
    b = load_config(None, [*OVERRIDES, "evolution.n_checkpoints=8"])
    assert ke.train_unit(a, 0).key != ke.train_unit(b, 0).key
    common = set(ke.checkpoint_steps(a)) & set(ke.checkpoint_steps(b))
    assert len(common) >= 3
    for t in common:
        assert ke.kernel_unit(a, 0, t).key == ke.kernel_unit(b, 0, t).key
    c = load_config(None, [*OVERRIDES, "kernel.mode=logit-sum"])
    assert ke.kernel_unit(a, 0, 0).key != ke.kernel_unit(c, 0, 0).key


def test_probe_kernel_assembly_matches_a_direct_entk() -> None:
    cfg = load_config(None, OVERRIDES)
    ctx = RunContext(cfg, False)
    s, ev = ctx.splits, cfg.evolution
    model = init_model(ctx, 0)
    blocks = checkpoint_kernels(ctx, model, ke.n_kernel_train(cfg), ev.probe_test)
    assert blocks["train"].shape == (64, 64)
    assert blocks["cross"].shape == (len(s.x_val) + len(s.x_test), 64)
    probe = probe_kernel(blocks, len(s.x_val), ev.probe_train)
    x = torch.as_tensor(np.concatenate([s.x_train[: ev.probe_train], s.x_test[: ev.probe_test]]))
    direct = empirical_ntk(model, x).numpy()
    assert probe.shape == (40, 40)
    np.testing.assert_allclose(probe, direct, rtol=1e-5, atol=1e-6 * np.abs(direct).max())


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("evolution") / "run"
    assert main(["run", "--out", str(out), *CLI]) == 0
    return out


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


def test_tiny_kernel_evolution_run(tiny_run: Path) -> None:
    out = tiny_run
    for name in ("config.toml", "results.csv", "summary.json", "units.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["experiment"] == "kernel-evolution" and summary["exponents"] == {}
    assert summary["units"]["failed"] == 0
    ev = summary["evolution"]
    for key in (
        "velocity_above_10pct_of_peak_fraction",
        "final_distance_to_init",
        "final_alignment",
        "kt_regression_test_loss_final",
        "nn_test_loss_final",
    ):
        assert np.isfinite(ev[key]), key
    assert 0 < ev["velocity_above_10pct_of_peak_fraction"] <= 1
    assert 0 < ev["final_distance_to_init"] <= 1
    assert ev["regress_n"] == 64
    steps = summary["checkpoints"]["steps"]
    assert steps[0] == 0 and steps[-1] == 24 and {12, 18} <= set(steps)
    assert [m["step"] for m in ev["per_seed"][0]["milestones"]] == [12, 18]
    for fig in summary["figures"]:
        assert (out / fig).stat().st_size > 1000
    assert set(summary["figures"]) == {
        "kernel_motion.png",
        "alignment.png",
        "kt_regression.png",
        "spectrum.png",
    }

    rows = _rows(out)
    assert list(rows[0]) == ["experiment", "method", "n", "width", "seed", "step", "metric", "value"]
    metrics = {r["metric"] for r in rows}
    want = {"distance_to_init", "velocity", "angular_velocity", "alignment", "eff_rank", "eig_1", "eig_4"}
    assert want | {"kt_test_mse", "kt_test_error", "nn_test_mse", "nn_test_error", "epoch"} <= metrics
    by_metric = {m: sorted(int(r["step"]) for r in rows if r["metric"] == m) for m in metrics}
    assert by_metric["distance_to_init"] == steps
    assert by_metric["velocity"] == steps[:-1]  # v(t_i) on [t_i, t_i+1]
    assert {r["n"] for r in rows if r["metric"] == "kt_test_mse"} == {"64"}

    # a re-run reuses every unit (analysis from the stored checkpoints and kernels)
    before = (out / "results.csv").read_text()
    assert main(["run", "--out", str(out), *CLI]) == 0
    assert (out / "results.csv").read_text() == before
    assert json.loads((out / "summary.json").read_text())["units"]["computed"] == 0


def test_velocity_from_stored_checkpoints_equals_velocity_during_training(tiny_run: Path) -> None:
    """K_t computed in on_checkpoint of a fresh training run gives the velocities the
    experiment computed from its stored checkpoint units."""
    cfg = load_config(None, OVERRIDES)
    ctx = RunContext(cfg, False)
    s, ev = ctx.splits, cfg.evolution
    probes: dict[int, np.ndarray] = {}

    def on_checkpoint(step: int, model: torch.nn.Module) -> None:
        blocks = checkpoint_kernels(ctx, model, ke.n_kernel_train(cfg), ev.probe_test)
        probes[step] = probe_kernel(blocks, len(s.x_val), ev.probe_train)

    n = ev.n
    # units run with torch threads = their num_cpus (executors.unit_environment): the same here
    unit = ke.train_unit(cfg, 0)
    assert all(ke.kernel_unit(cfg, 0, t).threads == unit.threads for t in ke.checkpoint_steps(cfg))
    with unit_environment(unit):
        train(
            init_model(ctx, 0),
            ctx.tensor(s.x_train[:n]),
            ctx.tensor(s.y_train[:n]),
            ctx.tensor(s.labels_train[:n], torch.long),
            cfg.train,
            seed=batch_seed(cfg, 0, n),
            checkpoint_steps=ke.checkpoint_steps(cfg),
            on_checkpoint=on_checkpoint,
            progress=False,
        )
    steps = sorted(probes)
    live = {
        t0: kernel_distance(probes[t0], probes[t1])
        / (steps_to_epochs(t1, n, cfg.train.batch_size) - steps_to_epochs(t0, n, cfg.train.batch_size))
        for t0, t1 in zip(steps, steps[1:])
    }
    stored = {int(r["step"]): float(r["value"]) for r in _rows(tiny_run) if r["metric"] == "velocity"}
    assert sorted(stored) == sorted(live)
    for t, v in live.items():
        assert abs(stored[t] - v) <= 1e-12, (t, stored[t], v)
    assert max(live.values()) > 0


def test_summary_keys_present_when_nothing_finished() -> None:
    """A run whose units all failed still writes every summary key (NaN), and no rows."""
    cfg = load_config(None, OVERRIDES)
    rows, summary = ke.analyze(cfg, {}, None)
    assert rows == [] and summary["exponents"] == {}
    assert set(ke.SUMMARY_KEYS) <= set(summary["evolution"])
    assert math.isnan(summary["evolution"]["velocity_above_10pct_of_peak_fraction"])
    assert summary["evolution"]["seeds_done"] == 0
