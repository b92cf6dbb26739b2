"""Experiment ``kernel-evolution``: angles and the motion verdict on constructed trajectories,
checkpoints, angular velocity from stored checkpoints vs during training, and a tiny end-to-end
run through the CLI."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from ntklab.cli import main
from ntklab.config import load_config
from ntklab.errors import ConfigError
from ntklab.experiments import evolution_checkpoints as ck
from ntklab.experiments import evolution_units as eu
from ntklab.experiments import kernel_evolution as ke
from ntklab.experiments import kernel_motion as km
from ntklab.experiments.common import batch_seed, init_model
from ntklab.experiments.evolution_units import checkpoint_kernels
from ntklab.experiments.kernel_motion import probe_kernel
from ntklab.kernels import empirical_ntk
from ntklab.kernels.metrics import alignment, kernel_angle, kernel_distance
from ntklab.run.context import RunContext
from ntklab.run.execute import unit_environment
from ntklab.train import lr_factor, train

OVERRIDES = [
    "experiment=kernel-evolution",
    "data.num_samples=1000",
    "data.n_min=8",
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


def test_angles_by_hand() -> None:
    """θ(diag(1,0), diag(1,1)) = π/4 (S = 1 − 1/√2); ω = θ / dt with dt = 0.5 epoch."""
    a, b = np.diag([1.0, 0.0]), np.diag([1.0, 1.0])
    assert kernel_angle(a, b) == pytest.approx(math.pi / 4, abs=1e-15)
    assert kernel_angle(a, b) == pytest.approx(math.acos(1 - kernel_distance(a, b)), abs=1e-12)
    assert km.angles([a, b, 3 * b]) == pytest.approx([math.pi / 4, 0.0], abs=1e-15)
    assert km.angular_velocities([a, b], [0.0, 0.5]) == pytest.approx([(math.pi / 4) / 0.5], abs=1e-12)
    # exact for tiny angles too, where 1 − cos θ has lost the digits: θ = 1e-9
    assert kernel_angle(rotated(0.0), rotated(1e-9)) == pytest.approx(1e-9, rel=1e-6)


U3, V3 = np.diag([1.0, 0.0, 0.0]), np.diag([0.0, 1.0, 1.0]) / math.sqrt(2)


def rotated(phi: float) -> np.ndarray:
    """Unit-norm PSD kernel at angle phi from U3 on a great circle: θ(rotated(a), rotated(b)) = |a − b|."""
    return math.cos(phi) * U3 + math.sin(phi) * V3


def trajectory(phi: Callable[[float], float], epochs: np.ndarray) -> list[np.ndarray]:
    return [rotated(phi(e)) for e in epochs]


def test_angular_velocity_does_not_depend_on_dt_for_steady_rotation() -> None:
    """A kernel rotating at a constant rate: ω is the rate for any dt, S / dt grows with dt."""
    rate = 0.1  # rad per epoch
    for dt in (0.5, 2.0, 8.0):
        (w,) = km.angular_velocities([rotated(0.2), rotated(0.2 + rate * dt)], [0.0, dt])
        assert w == pytest.approx(rate, rel=1e-9)
    v_short = kernel_distance(rotated(0.2), rotated(0.2 + rate)) / 1.0
    v_long = kernel_distance(rotated(0.2), rotated(0.2 + 8 * rate)) / 8.0
    assert v_long > 5 * v_short


# angle turned after e epochs of a 100-epoch run: a fast start of `jump` rad over ~2 epochs,
# then a steady drift of `drift` rad/epoch
def path(jump: float, drift: float) -> Callable[[float], float]:
    return lambda e: jump * (1 - math.exp(-e / 2)) + drift * e


@pytest.mark.parametrize(
    ("jump", "drift", "verdict"),
    [(1.0, 0.0005, "settles"), (0.3, 0.01, "keeps-moving"), (0.02, 0.0002, "barely-moves")],
)
def test_same_trajectory_at_two_spacings_gives_the_same_verdict_and_speeds(
    jump: float, drift: float, verdict: str
) -> None:
    phi = path(jump, drift)
    fine, coarse = np.linspace(0, 100, 17), np.linspace(0, 100, 9)  # Δ = 6.25 and 12.5 epochs
    mf, mc = (
        km.grid_motion(trajectory(phi, fine), list(fine)),
        km.grid_motion(trajectory(phi, coarse), list(coarse)),
    )
    assert mf["verdict"] == mc["verdict"] == verdict
    for key in ("first_half", "second_half", "second_over_first", "total_angle"):
        assert mf[key] == pytest.approx(mc[key], rel=1e-9), key
    assert mf["total_angle"] == pytest.approx(phi(100.0), rel=1e-9)
    assert mf["first_half"] == pytest.approx(phi(50.0) / 50, rel=1e-9)
    # a coarse interval's ω is the mean of its two fine ones (angles add along the path)
    w = np.asarray(mf["omega"])
    np.testing.assert_allclose(mc["omega"], (w[0::2] + w[1::2]) / 2, rtol=1e-9)


def test_log_spaced_checkpoints_would_mislead_velocity_but_not_the_verdict() -> None:
    """On a kernel whose angular speed falls 30× (settles), S/dt over log-spaced intervals rises
    towards the end; the verdict from the even grid says "settles"."""
    phi = path(1.0, 0.0005)
    speed = [1.0 / 2 * math.exp(-e / 2) + 0.0005 for e in (1.0, 30.0)]
    assert speed[0] / speed[1] > 30
    log_e = [0.0, *np.geomspace(0.1, 100, 8)]
    ks = trajectory(phi, np.asarray(log_e))
    v = [kernel_distance(a, b) / float(e1 - e0) for a, b, e0, e1 in zip(ks, ks[1:], log_e, log_e[1:])]
    assert v[-1] > v[-2]  # the longest, slowest interval reads faster than the one before
    assert (
        km.grid_motion(trajectory(phi, np.linspace(0, 100, 17)), list(np.linspace(0, 100, 17)))["verdict"]
        == "settles"
    )


def test_small_total_angle_reads_barely_moves_whatever_its_shape() -> None:
    """A steady rotation of 0.03 rad in all (second half as fast as the first) barely moves;
    the same path 10× larger keeps moving."""
    e = np.linspace(0, 40, 9)
    slow = km.grid_motion(trajectory(lambda x: 0.03 * x / 40, e), list(e))
    assert slow["total_angle"] == pytest.approx(0.03) and slow["second_over_first"] == pytest.approx(1.0)
    assert slow["verdict"] == "barely-moves"
    assert km.grid_motion(trajectory(lambda x: 0.3 * x / 40, e), list(e))["verdict"] == "keeps-moving"
    # a lazy kernel: K_0 plus a small random drift
    rng = np.random.default_rng(0)
    f = rng.normal(size=(20, 30))
    k0, dk = f @ f.T, rng.normal(size=(20, 20))
    ks = [k0 + 0.01 * s * (dk @ dk.T) for s in range(9)]
    lazy = km.grid_motion(ks, list(e))
    assert lazy["total_angle"] < km.LAZY_ANGLE and lazy["verdict"] == "barely-moves"
    assert km.classify(km.LAZY_ANGLE, 1.0, km.KEEPS_MOVING) == "keeps-moving"
    assert km.classify(km.LAZY_ANGLE, 1.0, 0.99 * km.KEEPS_MOVING) == "settles"
    assert km.classify(math.nan, 1.0, 1.0) is None


def test_decade_angles_on_a_constructed_sequence() -> None:
    """φ(t) = c·log10(t / 4) + d(t): each decade [t, 10t] turns by φ(10t) − φ(t)."""
    assert ck.decade_steps(4000, 3) == [4, 40, 400]
    assert ck.decade_steps(24, 3) == [2]
    c = 0.2
    phi = {0: 0.0, 4: 0.05, 40: 0.05 + c, 400: 0.05 + 2 * c, 4000: 0.05 + 2.5 * c}
    kernels = {t: rotated(p) for t, p in phi.items()}
    got = km.decade_angles(kernels, [4, 40, 400, 4000])
    assert [(a, b) for a, b, _ in got] == [(4, 40), (40, 400), (400, 4000)]
    assert [th for _, _, th in got] == pytest.approx([c, c, c / 2], rel=1e-9)
    assert km.decade_ratio([th for _, _, th in got]) == pytest.approx(0.5)
    del kernels[40]  # a missing kernel drops the decades it bounds
    assert [(a, b) for a, b, _ in km.decade_angles(kernels, [4, 40, 400, 4000])] == [(400, 4000)]


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoints_even_grid_decades_and_ends() -> None:
    cfg = load_config(None, ["experiment=kernel-evolution"])
    total = cfg.train.total_steps(cfg.evolution.n)
    assert total == 4000 and cfg.train.optimizer == "adam" and cfg.train.lr == 0.03
    grid = ck.grid_steps(cfg)
    assert len(grid) == cfg.evolution.n_checkpoints and set(np.diff(grid)) == {250}
    assert ck.decade_points(cfg) == [4, 40, 400, 4000]
    steps = ck.checkpoint_steps(cfg)
    assert steps == sorted({*grid, 4, 40, 400})
    assert ke.kt_grid(cfg) == [64, 91, 128, 181, 256, 362, 512, 724, 1024]
    explicit = load_config(None, ["experiment=kernel-evolution", "evolution.checkpoint_steps=[10, 100]"])
    assert ck.checkpoint_steps(explicit) == sorted({*steps, 10, 100})
    assert ck.grid_steps(explicit) == grid  # extra checkpoints stay out of ω
    assert ck.even_steps(10, 5) == [0, 2, 5, 8, 10]  # rounded (half to even)
    with pytest.raises(ConfigError, match="after the end of training"):
        load_config(None, ["experiment=kernel-evolution", "evolution.checkpoint_steps=[99999]"])
    with pytest.raises(ConfigError, match="regress_n"):
        load_config(None, ["experiment=kernel-evolution", "evolution.regress_n=8192"])
    # the experiment's training defaults survive an override of another train key
    lazy = load_config(None, ["experiment=kernel-evolution", "train.lr=0.001"])
    assert (lazy.train.optimizer, lazy.train.steps) == ("adam", 4000)


def test_step_schedule_adds_checkpoints_around_each_lr_drop() -> None:
    cfg = load_config(None, ["experiment=kernel-evolution", "train.schedule=step", "train.steps=1000"])
    drops = [t for t in range(1, 1000) if lr_factor(cfg.train, t, 1000) < lr_factor(cfg.train, t - 1, 1000)]
    assert ck.milestone_steps(cfg) == drops == [500, 750]
    delta = round(cfg.evolution.milestone_window * 1000)
    steps = ck.checkpoint_steps(cfg)
    for t in drops:
        assert {t - delta, t, t + delta} <= set(steps)
    assert ck.milestone_steps(load_config(None, ["experiment=kernel-evolution"])) == []
    # ω just before and after each drop, on intervals of δ steps
    probes = {t: rotated(t / 1000) for t in steps}
    probes[750 + delta] = rotated(0.75 + 0.1 * delta / 1000)
    report = ke.milestone_report(cfg, probes)
    e = delta * cfg.train.batch_size / cfg.evolution.n  # δ in epochs
    assert [r["step"] for r in report] == [500, 750]
    assert report[0]["angular_velocity_before"] == pytest.approx((delta / 1000) / e)
    assert report[1]["after_over_before"] == pytest.approx(0.1)


def test_kernel_units_survive_a_change_of_checkpoints() -> None:
    """The state at a step does not depend on which steps are kept: refining the checkpoints
    retrains, but kernels at steps already computed are reused."""
    a = load_config(None, OVERRIDES)
    b = load_config(None, [*OVERRIDES, "evolution.n_checkpoints=8"])
    assert eu.train_unit(a, 0).key != eu.train_unit(b, 0).key
    common = set(ck.checkpoint_steps(a)) & set(ck.checkpoint_steps(b))
    assert len(common) >= 3
    for t in common:
        assert eu.kernel_unit(a, 0, t).key == eu.kernel_unit(b, 0, t).key
    c = load_config(None, [*OVERRIDES, "kernel.mode=logit-sum"])
    assert eu.kernel_unit(a, 0, 0).key != eu.kernel_unit(c, 0, 0).key


def test_probe_kernel_assembly_matches_a_direct_entk() -> None:
    cfg = load_config(None, OVERRIDES)
    ctx = RunContext(cfg, False)
    s, ev = ctx.seed_splits(1), cfg.evolution  # repetition 1 draws its own training points
    assert not np.array_equal(s.x_train[:8], ctx.seed_splits(0).x_train[:8])
    model = init_model(ctx, 1)
    blocks = checkpoint_kernels(ctx, model, 1, eu.n_kernel_train(cfg), ev.probe_test)
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
        "total_angle",
        "angular_speed_first_half",
        "angular_speed_second_half",
        "second_over_first_half",
        "final_distance_to_init",
        "final_alignment",
        "kt_regression_test_loss_init",
        "kt_regression_test_loss_final",
        "nn_test_loss_final",
        "nn_train_loss_final",
    ):
        assert np.isfinite(ev[key]), key
    assert ev["verdict"] in km.VERDICTS and ev["verdict_half_resolution"] in km.VERDICTS
    assert 0 < ev["total_angle"] <= ev["path_angle"] + 1e-12
    assert ev["regress_n"] == 64 and ev["kt_grid"] == [8, 11, 16, 23, 32, 45, 64] and ev["steps"] == 24
    steps = summary["checkpoints"]["steps"]
    grid = summary["checkpoints"]["grid_steps"]
    assert grid == [0, 6, 12, 18, 24] and set(grid) | {2} == set(steps)
    assert [m["step"] for m in ev["per_seed"][0]["milestones"]] == [12, 18]
    assert [(d["from_step"], d["to_step"]) for d in ev["decade_angles"]] == [(2, 24)]
    # α(t) of K_t regression at every checkpoint, finite
    kt = ev["kt_exponents"]
    assert [e["step"] for e in kt] == steps
    for e in kt:
        assert set(e) == {"step", "epoch", "alpha", "ci_low", "ci_high"}
        assert np.isfinite(e["alpha"]) and e["ci_low"] <= e["alpha"] <= e["ci_high"], e
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
    want = {"distance_to_init", "angle_to_init", "angular_velocity", "decade_angle", "alignment", "eig_4"}
    assert want | {"kt_test_mse", "kt_test_error", "nn_test_mse", "nn_test_error", "epoch"} <= metrics
    by_metric = {m: sorted(int(r["step"]) for r in rows if r["metric"] == m) for m in metrics}
    assert by_metric["angle_to_init"] == steps
    assert by_metric["angular_velocity"] == grid[:-1]  # ω(t_i) on [t_i, t_i+1] of the grid
    assert {r["n"] for r in rows if r["metric"] == "kt_test_mse"} == {"8", "11", "16", "23", "32", "45", "64"}

    # a re-run reuses every unit (analysis from the stored checkpoints and kernels)
    before = (out / "results.csv").read_text()
    assert main(["run", "--out", str(out), *CLI]) == 0
    assert (out / "results.csv").read_text() == before
    assert json.loads((out / "summary.json").read_text())["units"]["computed"] == 0


def test_angular_velocity_from_stored_checkpoints_equals_during_training(tiny_run: Path) -> None:
    """K_t computed in on_checkpoint of a fresh training run gives the angular velocities the
    experiment computed from its stored checkpoint units."""
    cfg = load_config(None, OVERRIDES)
    ctx = RunContext(cfg, False)
    s, ev = ctx.seed_splits(0), cfg.evolution
    probes: dict[int, np.ndarray] = {}

    def on_checkpoint(step: int, model: torch.nn.Module) -> None:
        blocks = checkpoint_kernels(ctx, model, 0, eu.n_kernel_train(cfg), ev.probe_test)
        probes[step] = probe_kernel(blocks, len(s.x_val), ev.probe_train)

    n = ev.n
    # units run with torch threads = their num_cpus (executors.unit_environment): the same here
    unit = eu.train_unit(cfg, 0)
    assert all(eu.kernel_unit(cfg, 0, t).threads == unit.threads for t in ck.checkpoint_steps(cfg))
    with unit_environment(unit):
        train(
            init_model(ctx, 0),
            ctx.tensor(s.x_train[:n]),
            ctx.tensor(s.y_train[:n]),
            ctx.tensor(s.labels_train[:n], torch.long),
            cfg.train,
            seed=batch_seed(cfg, 0, n),
            checkpoint_steps=ck.checkpoint_steps(cfg),
            on_checkpoint=on_checkpoint,
            progress=False,
        )
    grid = ck.grid_steps(cfg)
    live = km.angular_velocities([probes[t] for t in grid], [ck.epoch_at(cfg, t) for t in grid])
    stored = {int(r["step"]): float(r["value"]) for r in _rows(tiny_run) if r["metric"] == "angular_velocity"}
    assert sorted(stored) == grid[:-1]
    for t, w in zip(grid, live):
        assert abs(stored[t] - w) <= 1e-9 * max(w, 1e-3), (t, stored[t], w)
    assert max(live) > 0


def test_summary_keys_present_when_nothing_finished() -> None:
    """A run whose units all failed still writes every summary key (NaN), and no rows."""
    cfg = load_config(None, OVERRIDES)
    rows, summary = ke.analyze(cfg, {}, None)
    assert rows == [] and summary["exponents"] == {}
    ev = summary["evolution"]
    assert set(ke.SUMMARY_KEYS) <= set(ev)
    assert math.isnan(ev["total_angle"]) and ev["verdict"] is None
    assert ev["seeds_done"] == 0 and ev["kt_exponents"] == [] and ev["decade_angles"] == []
