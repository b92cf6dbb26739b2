"""``ntklab explain``: end to end on a user's model file and .npz, the planner, bad input."""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import tomllib
from torch import nn

from ntklab import explain
from ntklab.config.loading import validate
from ntklab.errors import ArchError, DataError, NtkLabError, RunDirError
from ntklab.explain import (
    MIN_FACTOR,
    N_USEFUL,
    PARTIAL,
    SHORT_RULES,
    STOP_PRIOR,
    TRAIN_RULES,
    BudgetGuard,
    Calibration,
    CostModel,
    Estimator,
    Inputs,
    Probe,
    choose_plan,
    head_levels,
    list_schedule,
    make_configs,
    network_check,
    replan,
    resolve_inputs,
    tail_levels,
)
from ntklab.explain.running import TOP_UP_MAX_SEEDS
from ntklab.report.formatting import fmt_exp, fmt_num

MODEL = """
from torch import nn


def make_model(input_shape, num_outputs):
    d = 1
    for s in input_shape:
        d *= s
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, num_outputs))


def not_a_module(num_outputs):
    return "a string"


def wrong_outputs(input_shape):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], 7))
"""


@pytest.fixture(scope="module")
def user_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A user's model file and a tiny 3-class .npz (and one lacking a key)."""
    d = tmp_path_factory.mktemp("user")
    (d / "model.py").write_text(MODEL)
    rng = np.random.default_rng(0)
    w = rng.normal(size=(12, 3))
    x, xt = rng.normal(size=(400, 12)).astype("f4"), rng.normal(size=(150, 12)).astype("f4")
    arrays = {"x_train": x, "y_train": (x @ w).argmax(1), "x_test": xt, "y_test": (xt @ w).argmax(1)}
    np.savez(d / "data.npz", **arrays)
    np.savez(d / "nokey.npz", x_train=x, y_train=arrays["y_train"], x_test=xt)
    return {"dir": d, "model": d / "model.py", "data": d / "data.npz", "nokey": d / "nokey.npz"}


def _hooked() -> bool:
    """Whether ``ntklab.cli`` already has the explain/report subcommands."""
    from ntklab import cli

    sub = next(a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction))
    return "explain" in sub.choices


STANDALONE = """
import argparse, sys
from ntklab.cli_explain import add_subcommands
from ntklab.errors import NtkLabError
p = argparse.ArgumentParser(prog="ntklab")
add_subcommands(p.add_subparsers(dest="command", required=True))
args = p.parse_args(sys.argv[1:])
try:
    sys.exit(args.func(args))
except NtkLabError as err:
    print(f"ntklab: error: {err}", file=sys.stderr)
    sys.exit(err.exit_code)
"""


def cli_command(args: list[str]) -> list[str]:
    """``python -m ntklab ARGS`` once hooked into the main CLI, else the same through cli_explain."""
    if _hooked():
        return [sys.executable, "-m", "ntklab", *args]
    return [sys.executable, "-c", STANDALONE, *args]


def numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?", text)]


def check_report_matches_summaries(out: Path) -> None:
    """Every exponent and evolution number of every summary appears, display-rounded, in both
    report.md (tables) and report.html (table cells), and in the verdict sentences."""
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    info = json.loads((out / "explain.json").read_text())
    cells = re.findall(r'<td class="num">([^<]*)</td>', html)
    rows = {}
    for line in md.splitlines():
        c = [x.strip() for x in line.strip().strip("|").split("|")]
        if len(c) >= 6 and re.fullmatch(r"-?\d+\.\d{3}|nan", c[2]):
            rows.setdefault(c[1], []).append(c[2:6])  # α, CI low, CI high, a (then fit, n range)
    done = [e for e in info["experiments"] if e["status"] in ("done", "partial")]
    assert done, info
    for e in done:
        summary = json.loads((out / e["dir"] / "summary.json").read_text())
        for method, fit in summary["exponents"].items():
            want = [fmt_exp(fit["alpha"]), fmt_exp(fit["ci_low"]), fmt_exp(fit["ci_high"]), fmt_num(fit["a"])]
            assert want in rows[method], (method, want, rows.get(method))
            for w in want[:3]:
                assert w in cells
            if math.isfinite(fit["alpha"]):
                assert f"α = {want[0]} [{want[1]}, {want[2]}]" in md  # the verdict sentence
        for key, value in (summary.get("evolution") or {}).items():
            if isinstance(value, float):
                assert f"| {key} | {fmt_num(value)} |" in md
                assert fmt_num(value) in cells
        for fig in summary["figures"]:
            assert f"({e['dir']}/{fig})" in md
    assert html.count("data:image/png;base64,") == sum(
        len(json.loads((out / e["dir"] / "summary.json").read_text())["figures"]) for e in done
    )


# ----------------------------------------------------------------------------- end to end


def test_explain_end_to_end_cli(user_files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "explain"
    args = [
        "explain",
        "--model",
        f"{user_files['model']}:make_model",
        "--data",
        str(user_files["data"]),
        "--budget-minutes",
        "1.5",
        "--n-max",
        "64",
        "--workers",
        "1",
        "--set",
        "train.lr=0.05",
        "--set",
        "fit.bootstrap=50",
        "--out",
        str(out),
        "-q",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cli_command(args), capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "plan for a budget of 1.5 min" in proc.stdout and "data-scaling" in proc.stdout
    info = json.loads((out / "explain.json").read_text())
    assert info["experiments"][0]["status"] in ("done", "partial")
    assert max(info["plan"]["n_grid"]) <= 64
    assert info["seconds"] < 1.5 * 60 * 1.1 and wall < 1.5 * 60 * 1.1 + 30  # (+ interpreter start-up)
    check_report_matches_summaries(out)
    summary = json.loads((out / "data-scaling" / "summary.json").read_text())
    assert {"nn", "entk"} <= set(summary["exponents"]), summary
    cfg = (out / "data-scaling" / "config.toml").read_text()
    assert "lr = 0.05" in cfg and "make_model" in cfg  # the user's setting is kept

    # the networks trained by the stated rule, and the reports say it
    assert "early stopping" in info["plan"]["training"] and "at least" in info["plan"]["training"]
    assert info["training"]["planned_steps"] == info["plan"]["steps"]
    assert info["training"]["notes"][0] in (out / "report.md").read_text()
    assert "Training rule:" in proc.stdout

    # the same command again resumes: same plan, every unit cached (only units skipped for
    # time computed), same numbers
    before = set((out / "data-scaling" / "results.csv").read_text().splitlines())
    skipped = len(info["experiments"][0].get("skipped_units", []))
    proc = subprocess.run(cli_command(args), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming" in proc.stdout
    after = set((out / "data-scaling" / "results.csv").read_text().splitlines())
    assert before <= after and (skipped or after == before)
    computed = json.loads((out / "data-scaling" / "summary.json").read_text())["units"]["computed"]
    assert computed <= skipped

    # other inputs into the same folder are refused
    proc = subprocess.run(
        cli_command([*args[:-1], "--set", "seeds=3", "-q"]), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2 and "other inputs" in proc.stderr


def test_explain_python_api_with_a_closure_and_arrays(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x, xt = rng.normal(size=(300, 6)).astype("f4"), rng.normal(size=(80, 6)).astype("f4")
    data = {
        "x_train": x,
        "y_train": (x[:, 0] > 0).astype(int),
        "x_test": xt,
        "y_test": (xt[:, 0] > 0).astype(int),
    }
    hidden = 8

    def factory(num_outputs: int) -> nn.Module:  # a closure: no importable source
        return nn.Sequential(nn.Linear(6, hidden), nn.ReLU(), nn.Linear(hidden, num_outputs))

    lines: list[str] = []
    result = explain(
        factory,
        data,
        out=tmp_path / "api",
        budget_minutes=1.5,
        n_max=48,
        workers=1,
        overrides=["train.lr=0.05", "fit.bootstrap=50"],
        progress=False,
        echo=lines.append,
    )
    out = Path(result["out"])
    assert Path(result["report_html"]).is_file() and Path(result["report_md"]).is_file()
    assert len(list(out.glob("data-*.npz"))) == 1 and len(list(out.glob("user-model-*.pkl"))) == 1
    assert any(line.startswith("plan for a budget") for line in lines)
    assert "data-scaling" in result["summaries"]
    assert result["summaries"]["data-scaling"]["units"]["total"] > 0
    check_report_matches_summaries(out)
    # a tiny plan leaves most of the budget: it buys data-scaling repetitions (new data draws)
    grew = [line for line in lines if "data scaling grows from" in line]
    assert grew and result["plan"]["seeds"] == TOP_UP_MAX_SEEDS, lines
    ds = validate(tomllib.loads((out / "data-scaling" / "config.toml").read_text()))
    assert ds.seeds == TOP_UP_MAX_SEEDS
    seeds_in_results = {r["seed"] for r in csv.DictReader((out / "data-scaling" / "results.csv").open())}
    assert len(seeds_in_results) == TOP_UP_MAX_SEEDS
    assert result["seconds"] < 1.5 * 60 * 1.1


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("model", "data", "words"),
    [
        ("not_a_module", "data", ["returned str", "not a torch nn.Module"]),
        ("wrong_outputs", "data", ["outputs (7,)", "3 value(s) per sample"]),
        ("make_model", "nokey", ["lacks key(s) y_test"]),
        ("no_such_function", "data", ["has no function 'no_such_function'"]),
    ],
)
def test_bad_input_exit_2_one_sentence(
    user_files: dict[str, Path], tmp_path: Path, model: str, data: str, words: list[str]
) -> None:
    out = tmp_path / "out"
    args = ["explain", "--model", f"{user_files['model']}:{model}", "--data", str(user_files[data])]
    proc = subprocess.run(
        cli_command([*args, "--out", str(out), "-q"]), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip()
    assert line.count("\n") == 0 and line.startswith("ntklab: error: "), line
    for w in words:
        assert w in line
    assert not out.exists()  # failed before any work


def test_resolve_inputs_errors(user_files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(DataError, match="neither an existing .npz file nor a dataset name"):
        resolve_inputs(None, "imagenet", out=tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        resolve_inputs(None, str(tmp_path / "missing.npz"), out=tmp_path)
    with pytest.raises(DataError, match="give --data-path"):
        resolve_inputs(None, "cifar10", out=tmp_path)
    with pytest.raises(DataError, match="the data dict lacks key"):
        resolve_inputs(None, {"x_train": np.zeros((3, 2))}, out=tmp_path)
    with pytest.raises(ArchError, match="PATH.py:FUNCTION"):
        resolve_inputs("model.py", "digits", out=tmp_path)
    with pytest.raises(ArchError, match="or a callable"):
        resolve_inputs(42, "digits", out=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(NtkLabError, match="positive number of minutes"):
        resolve_inputs(None, "digits", out=tmp_path, budget_minutes=0)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "something.txt").write_text("x")
    with pytest.raises(RunDirError, match="not an ntklab explain folder"):
        explain(
            f"{user_files['model']}:make_model", str(user_files["data"]), out=tmp_path / "busy", echo=None
        )


def test_cli_needs_a_model(user_files: dict[str, Path]) -> None:
    proc = subprocess.run(
        cli_command(["explain", "--data", "digits"]), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "explain needs a model" in proc.stderr


# ----------------------------------------------------------------------------- planner


def fake_probe(**kw: float) -> Probe:
    base = dict(
        load_s=0.5,
        init_s=0.01,
        step_s=0.05,
        fwd_s=1e-4,
        feature_s=0.01,
        pair_s=1e-6,
        entk_overhead_s=0.05,
        feature_bytes=4 * 10 * 50_000,
        regress_s=0.02,
        fit_s=0.1,
        figure_s=0.5,
        infinite_pair_s=0.0,
        pool=5000,
        n_test_max=1000,
        num_outputs=10,
        n_params=50_000,
        batch=128,
    )
    return Probe(**{**base, **kw})


def fake_inputs(**kw: object) -> Inputs:
    base = {"data": {"name": "digits"}, "arch": {"name": "mlp", "factory": "m.py:f"}}
    return Inputs("m.py:f", "m", "digits", base, {}, (), kw.get("n_cap"), 600.0)  # type: ignore[arg-type]


class NoStore:
    def has(self, key: str) -> bool:
        return False


def test_list_schedule_respects_workers_and_dependencies() -> None:
    items = [("a", 4.0, ()), ("b", 4.0, ()), ("c", 1.0, ("a",)), ("d", 1.0, ("c",))]
    assert list_schedule(items, 1) == 10.0
    assert list_schedule(items, 2) == 6.0  # a | b in parallel, then c, then d after c
    assert list_schedule([], 2) == 0.0


def test_costs_grow_with_n_and_steps() -> None:
    c = CostModel(fake_probe())
    assert c.entk(512, 1000) > c.entk(256, 1000) > c.entk(256, 0) > 0
    assert c.train(512, 200, 1000) > c.train(512, 100, 1000)
    assert c.regress(1024) == pytest.approx(64 * c.regress(256))
    assert CostModel(fake_probe(), factor=2.0).entk(256, 100) == pytest.approx(2 * c.entk(256, 100))


def test_entk_blocks_cost_their_share_of_the_kernel() -> None:
    """A kernel split into blocks (n > kernel.block) costs about what it costs whole, not the
    whole kernel per block; the unit of f0 beside them costs one initialization."""
    from ntklab.experiments.data_scaling import entk_units

    data = {"name": "digits", "n_min": 64, "n_max": 1024, "n_val": 64, "n_test": 100}
    cfg = ds_config(data=data, kernel={"block": 256})
    c = CostModel(fake_probe())
    f0, *blocks = entk_units(cfg, cfg.arch, 1024, 0)
    assert len(blocks) == 4 + 10
    p = fake_probe()
    fixed = c.factor * (p.init_s + p.entk_overhead_s)  # every unit builds the network once
    whole = c.entk(1024, 164) - fixed - c.factor * p.entk_overhead_s  # (two engine calls)
    split = sum(c.unit(cfg, u) for u in blocks) - len(blocks) * fixed
    # each block computes the features of its rows and columns again (2.6x the whole kernel's
    # here, where features dominate): more than one kernel, far from 14 whole kernels
    assert whole < split < 4 * whole
    assert c.unit(cfg, f0) == pytest.approx(c.factor * p.init_s)


def test_head_levels_respect_cap_pool_and_user_settings() -> None:
    heads = head_levels(fake_inputs(n_cap=300), fake_probe())
    assert max(h.n_max for h in heads) == 300 and all(h.n_max + h.n_val <= 5000 for h in heads)
    for h in heads:
        grid = make_configs(fake_inputs(n_cap=300), h, tail_levels(h, [])[-1])["data-scaling"].data.n_grid()
        assert len(grid) in (3, 4) and grid[-1] == h.n_max and grid[0] == h.n_min, (h, grid)
    inputs = fake_inputs()
    inputs.base["seeds"] = 5
    assert {h.seeds for h in head_levels(inputs, fake_probe())} == {5}


def test_choose_plan_fits_the_budget_and_grows_with_it() -> None:
    est = Estimator(CostModel(fake_probe(), workers=2), NoStore())
    small = choose_plan(fake_inputs(), fake_probe(), est, 60.0)
    large = choose_plan(fake_inputs(), fake_probe(), est, 1200.0)
    assert small.total <= 60.0 and large.total <= 1200.0
    assert large.head.n_max > small.head.n_max
    assert "data-scaling" in small.configs and "kernel-evolution" in large.configs
    tiny = choose_plan(fake_inputs(), fake_probe(step_s=100.0), est, 1.0)
    assert not tiny.fits and tiny.head.n_max == min(h.n_max for h in head_levels(fake_inputs(), fake_probe()))


def test_calibration_and_early_stopping_fraction() -> None:
    cal = Calibration()
    cal.add(1.0, 0.5)
    assert cal.factor == 1.0  # too little measured
    cal.add(2.0, 8.0)
    assert cal.factor == pytest.approx(8.5 / 3.0)
    fast = Calibration()
    fast.add(100.0, 10.0)
    assert fast.factor == MIN_FACTOR  # faster than estimated: the plan may grow, by at most 1 / MIN_FACTOR
    fast.add(100.0, 150.0)
    assert fast.factor == pytest.approx(0.8)
    assert cal.stop_fraction == STOP_PRIOR  # until measured
    cal.add_training(1000, 300)
    assert cal.stop_fraction == STOP_PRIOR  # one run says little
    cal.add_training(1000, 500)
    assert cal.stop_fraction == pytest.approx(0.4)


# ----------------------------------------------------------------------------- training rule


def ds_config(**kw: object):
    from ntklab.config import validate

    raw = {"experiment": "data-scaling", "data": {"name": "digits", "n_min": 64, "n_max": 256}}
    return validate({**raw, **kw})


def test_plans_train_by_the_rule_with_early_stopping() -> None:
    inputs, probe = fake_inputs(), fake_probe()
    heads = head_levels(inputs, probe)
    assert (heads[0].epochs, heads[0].min_steps) == TRAIN_RULES[0] and not heads[0].short
    for h in heads[:: max(1, len(heads) // 12)]:
        configs = make_configs(inputs, h, tail_levels(h, ["pretrained-kernel", "kernel-evolution"])[0])
        tc = configs["data-scaling"].train
        assert (tc.epochs, tc.min_steps, tc.early_stopping) == (h.epochs, h.min_steps, True)
        for n in configs["data-scaling"].data.n_grid():  # clip(ceil(epochs · n / min(B, n)), min_steps)
            assert tc.total_steps(n) == max(h.min_steps, math.ceil(h.epochs * n / min(tc.batch_size, n)))
        assert tc.total_steps(h.n_max) == h.steps
        assert configs["pretrained-kernel"].train == tc  # the same networks: shared units
        evo = configs["kernel-evolution"]
        assert not evo.train.early_stopping and evo.train.epochs is None
        assert evo.train.total_steps(evo.evolution.n) == tc.total_steps(evo.evolution.n)
    # n shrinks to N_USEFUL before training gets shorter; below the useful rules only as a last resort
    rules = [(h.epochs, h.min_steps) for h in heads]
    for a, b in zip(heads, heads[1:]):
        if (b.epochs, b.min_steps) != (a.epochs, a.min_steps) and not b.short:
            assert (
                min(x.n_max for x in heads if (x.epochs, x.min_steps) == (a.epochs, a.min_steps)) <= N_USEFUL
            )
    assert rules.index(SHORT_RULES[0]) > max(i for i, r in enumerate(rules) if r == TRAIN_RULES[-1])
    assert all(h.short == ((h.epochs, h.min_steps) in SHORT_RULES) for h in heads)


def test_slow_models_keep_a_useful_training_length() -> None:
    """A model too slow for every experiment at a useful length drops seeds and experiments
    before its training is cut short; short training only when nothing else fits."""
    slow = fake_probe(step_s=0.5, feature_s=0.04, pair_s=1e-4, pool=5000)
    est = Estimator(CostModel(slow, workers=1), NoStore())
    heads = head_levels(fake_inputs(), slow)
    first_short = next(i for i, h in enumerate(heads) if h.short)
    assert all(h.seeds == 1 for h in heads[first_short - 3 : first_short])  # one seed before short
    plan = choose_plan(fake_inputs(), slow, est, 470.0)
    assert plan.fits and not plan.head.short and plan.head.steps >= TRAIN_RULES[-1][1], plan.head
    one = choose_plan(fake_inputs(), slow, est, 200.0)  # one seed, the other experiments dropped
    assert one.fits and not one.head.short and one.head.seeds == 1, one.head
    tiny = choose_plan(fake_inputs(), slow, est, 100.0)  # nothing else fits: said so
    assert tiny.fits and tiny.head.short and tiny.head.steps < TRAIN_RULES[-1][1]
    assert "shortened below a useful length" in tiny.describe()["training"]


def test_learning_rate_pick() -> None:
    from ntklab.explain import pick_lr

    # a ResNet with BatchNorm and Adam on one batch: the dozen-step losses favour the smallest
    # rate a little; the largest within LR_TOLERANCE of it trains better over a whole run
    assert pick_lr([(0.03, math.inf), (0.0075, 0.909), (0.001875, 0.59), (0.00047, 0.534)]) == 0.001875
    assert pick_lr([(0.03, 0.2), (0.0075, 0.3)]) == 0.03
    assert pick_lr([(0.03, math.inf)]) is None


def test_user_training_length_is_kept() -> None:
    inputs = fake_inputs()
    inputs.base["train"] = {"steps": 50}
    heads = head_levels(inputs, fake_probe())
    assert {(h.epochs, h.short) for h in heads} == {(None, False)}
    configs = make_configs(inputs, heads[0], tail_levels(heads[0], ["kernel-evolution"])[0])
    assert configs["data-scaling"].train.total_steps(4096) == 50
    assert configs["kernel-evolution"].train.steps == 50


def test_a_tight_budget_shrinks_n_before_training() -> None:
    """With the time for the longest rule at n_max = 512 but not at 4096 with a shorter rule
    either, the plan keeps the longest rule and a smaller n."""
    est = Estimator(CostModel(fake_probe(step_s=0.01), workers=2), NoStore())
    plan = choose_plan(fake_inputs(), fake_probe(step_s=0.01), est, 150.0)
    assert (plan.head.epochs, plan.head.min_steps) == TRAIN_RULES[0], plan.head
    assert N_USEFUL <= plan.head.n_max < 4096
    assert "100 epochs, at least 1000 steps" in plan.describe()["training"]


@pytest.mark.parametrize("seconds", [60.0, 180.0, 600.0, 1800.0])
def test_plan_uses_70_to_100_percent_of_the_time(seconds: float) -> None:
    probe = fake_probe(step_s=0.005, feature_s=0.002)
    est = Estimator(CostModel(probe, workers=2), NoStore())
    plan = choose_plan(fake_inputs(), probe, est, seconds)
    assert plan.fits and 0.7 * seconds <= plan.total <= seconds, (plan.total, plan.head, plan.tail)
    assert set(plan.configs) == {"data-scaling", "pretrained-kernel", "kernel-evolution"}


def test_replan_grows_and_shrinks_the_rest() -> None:
    probe = fake_probe(step_s=0.005, feature_s=0.002)
    est = Estimator(CostModel(probe, workers=2), NoStore())
    plan = choose_plan(fake_inputs(), probe, est, 180.0)
    rest = ["pretrained-kernel", "kernel-evolution"]
    larger = replan(fake_inputs(), plan, est, 400.0, rest)
    assert larger.fits and larger.tail.rank < plan.tail.rank
    assert larger.configs["data-scaling"] is plan.configs["data-scaling"]  # ran already: kept as it is
    smaller = replan(fake_inputs(), plan, est, 5.0, rest)
    assert smaller.tail.rank > plan.tail.rank and "data-scaling" in smaller.configs
    # the after-kernel ran: only the evolution run changes
    evo = replan(fake_inputs(), plan, est, 400.0, ["kernel-evolution"])
    assert evo.tail.pretrained_part() == plan.tail.pretrained_part()
    assert (
        evo.configs["kernel-evolution"].evolution.n_checkpoints
        >= plan.configs["kernel-evolution"].evolution.n_checkpoints
    )
    tails = tail_levels(plan.head, rest)
    assert [t.rank for t in tails] == sorted(t.rank for t in tails)
    assert all(t.pretrained and t.evolution for t in tails if t.rank < PARTIAL)


def test_cost_model_follows_early_stopping_and_the_engine_tiling() -> None:
    cfg = ds_config(data={"name": "digits", "n_min": 64, "n_max": 256, "n_val": 64, "n_test": 100})
    c = CostModel(fake_probe())
    full = c.network(cfg, 256)
    assert CostModel(fake_probe(), stop_fraction=0.5).network(cfg, 256) < 0.6 * full
    assert c.network(cfg, 256, taken=cfg.train.total_steps(256) // 2) < 0.6 * full
    no_stop = ds_config(train={"early_stopping": False}, data={"name": "digits", "n_val": 64, "n_test": 100})
    assert CostModel(fake_probe(), stop_fraction=0.5).network(no_stop, 256) == pytest.approx(full)
    # features computed once when they fit the engine's budget shares, recomputed per panel when not
    fb = fake_probe().feature_bytes
    roomy = CostModel(fake_probe(), budget_bytes=100 * 2000 * fb)
    assert roomy.feature_samples(1000, 500) == 1000 + 500 + 1000
    tight = CostModel(fake_probe(), budget_bytes=300 * fb)  # panels of ~70 rows
    assert tight.feature_samples(1000, 500) > 5 * 1500
    assert tight.entk(1000, 500) > roomy.entk(1000, 500)


def test_network_check_says_why_not() -> None:
    cfg = ds_config()
    summary = {
        "test_loss_at_n_max": {"nn": 0.5, "entk": 0.7},
        "training": {"per_n": {"nn": {"256": {"steps": 400.0}}}, "still_falling": []},
    }
    good = network_check(cfg, summary)
    assert good["nn"] == 0.5 and good["planned_steps"] == cfg.train.total_steps(256)
    assert "at least as good" in good["notes"][-1] and good["notes"][0].startswith("Training rule:")
    summary["test_loss_at_n_max"] = {"nn": 0.9, "entk": 0.7}
    assert "early stopping ended training" in network_check(cfg, summary)["notes"][-1]
    assert "shortened below a useful length" in network_check(cfg, summary, short=True)["notes"][-1]
    summary["training"]["improving_at_end"] = [{"method": "nn", "n": 256, "seed": 1}]
    assert "validation loss was still improving" in network_check(cfg, summary)["notes"][-1]
    summary["training"]["still_falling"] = [{"method": "nn", "n": 256, "seed": 0}]
    assert "still falling" in network_check(cfg, summary)["notes"][-1]
    # early stopping kept the weights at init: the network predicts f0, whatever it is compared with
    summary["test_loss_at_n_max"] = {"nn": 0.9, "entk": 0.92}
    at_init = network_check(cfg, summary, kept_at=[0.0, 0.0])
    assert at_init["best_step"] == 0.0 and "kept every network at initialization" in at_init["notes"][-1]
    assert "at least as good" in network_check(cfg, summary, kept_at=[0.0, 40.0])["notes"][-1]


def test_best_steps_read_from_results(tmp_path: Path) -> None:
    from ntklab.explain import best_steps

    csv = tmp_path / "results.csv"
    csv.write_text(
        "experiment,method,n,width,seed,step,metric,value\n"
        "data-scaling,nn,32,32,0,90,best_step,0.0\n"
        "data-scaling,nn,32,32,1,80,best_step,20.0\n"
        "data-scaling,nn,16,32,0,90,best_step,5.0\n"
        "data-scaling,entk,32,32,0,-1,test_mse,0.9\n"
    )
    assert best_steps(csv, 32) == [0.0, 20.0] and best_steps(tmp_path / "missing.csv", 32) == []


def test_load_data_keeps_downsample_and_channels() -> None:
    from ntklab.explain import load_data

    splits = load_data(ds_config(data={"name": "digits", "downsample": 2, "channels": 3}))
    assert splits.x_train.shape[1:] == (3, 4, 4) and len(splits.x_val) == 0
    assert len(splits.x_train) > 1000  # the whole pool


def test_cli_budget_in_seconds() -> None:
    from ntklab.cli_explain import add_subcommands

    p = argparse.ArgumentParser(prog="ntklab")
    add_subcommands(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["explain", "--data", "digits", "--budget", "180"])
    assert args.budget == 180.0 and args.budget_minutes is None
    with pytest.raises(SystemExit):
        p.parse_args(["explain", "--data", "digits", "--budget", "180", "--budget-minutes", "3"])


def test_executor_skips_units_past_the_deadline(tmp_path: Path) -> None:
    from ntklab.config import validate
    from ntklab.experiments import data_scaling
    from ntklab.progress import progress_bar
    from ntklab.run.local import LocalExecutor
    from ntklab.run.store import Store

    cfg = validate({"experiment": "data-scaling", "data": {"name": "digits", "n_min": 32, "n_max": 64}})
    units = data_scaling.plan(cfg)
    store = Store(tmp_path / "store")

    class Ctx:
        def __init__(self) -> None:
            self.cfg = cfg

    with progress_bar(total=len(units), desc="t", enabled=False) as bar:
        guard = BudgetGuard(cfg, CostModel(fake_probe()), time.perf_counter() - 1, Calibration(), bar, store)
        out = LocalExecutor(budget=guard).run(units, Ctx(), store)
    assert not out.computed and not out.failed
    assert len(guard.skipped) == len({u.key for u in units})
    assert not any(store.has(u.key) for u in units)  # missing, not failed: a re-run computes them


def test_executor_skips_whole_repetitions(tmp_path: Path) -> None:
    from ntklab.config import validate
    from ntklab.experiments import data_scaling
    from ntklab.progress import progress_bar
    from ntklab.run.context import RunContext
    from ntklab.run.local import LocalExecutor
    from ntklab.run.store import Store

    cfg = validate(
        {
            "experiment": "data-scaling",
            "seeds": 2,
            "data": {"name": "digits", "n_min": 32, "n_max": 64, "n_val": 32, "n_test": 64},
            "arch": {"name": "mlp", "depth": 1, "width": 16},
            "train": {"steps": 5},
        }
    )
    units = data_scaling.plan(cfg)
    store = Store(tmp_path / "store")
    slow = CostModel(fake_probe(step_s=1000.0))  # every unit looks far too long for the deadline
    now = time.perf_counter()
    with progress_bar(total=len(units), desc="t", enabled=False) as bar:
        guard = BudgetGuard(cfg, slow, now + 1.0, Calibration(), bar, store, hard_deadline=now + 1e7)
        out = LocalExecutor(budget=guard).run(units, RunContext(cfg, progress=False, store=store), store)
    seed0 = {u.key for u in units if u.args["seed_index"] == 0}
    assert set(out.computed) == seed0 and not out.failed  # the first repetition always runs
    assert guard.skipped and all("seed=1" in label for label in guard.skipped)


def test_units_reading_a_skipped_unit_are_left_unrun_not_failed(tmp_path: Path) -> None:
    from ntklab.config import validate
    from ntklab.experiments import kernel_evolution
    from ntklab.run.local import LocalExecutor
    from ntklab.run.schedule import Budget
    from ntklab.run.store import Store
    from ntklab.run.units import Unit

    cfg = validate({"experiment": "kernel-evolution", "data": {"name": "digits"}})
    units = kernel_evolution.plan(cfg)
    store = Store(tmp_path / "store")

    class NoTraining(Budget):
        def __init__(self) -> None:
            self.left_unrun: list[str] = []

        def skip(self, unit: Unit, waiting: Sequence[Unit], busy: int) -> list[Unit]:
            return [unit] if unit.fn.endswith(":train_with_checkpoints") else []

        def left(self, units: Sequence[Unit]) -> None:
            self.left_unrun += [u.key for u in units]

    budget = NoTraining()
    out = LocalExecutor(budget=budget).run(units, None, store)
    assert not out.computed and not out.failed
    assert sorted(budget.left_unrun) == sorted({u.key for u in units})
    assert not any(store.failure(u.key) for u in units)  # a later run computes them


def top_level_factory(num_outputs: int) -> nn.Module:
    """A factory at the top level of an importable module."""
    return nn.Linear(4, num_outputs)


def test_callables_become_file_references_or_pickles(tmp_path: Path) -> None:
    from ntklab.explain import callable_source, pickle_callable

    ref = callable_source(top_level_factory)
    assert ref is not None and ref.endswith("test_explain.py:top_level_factory")
    assert callable_source(lambda num_outputs: nn.Linear(4, num_outputs)) is None
    top_level_factory.__module__, old = "__main__", top_level_factory.__module__
    try:
        assert callable_source(top_level_factory) is None  # a script: never re-run it
    finally:
        top_level_factory.__module__ = old
    name, files = pickle_callable(lambda num_outputs: nn.Linear(4, num_outputs))
    assert name.endswith(".py") and set(files) == {name, name.replace(".py", ".pkl")}
    for f, blob in files.items():
        (tmp_path / f).write_bytes(blob)
    from ntklab.arch.factory import build_user_model

    model = build_user_model(f"{tmp_path / name}:make_model", 0, (4,), 3)
    assert isinstance(model, nn.Linear) and model.out_features == 3
