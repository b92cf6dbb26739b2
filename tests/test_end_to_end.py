"""A tiny data-scaling run through the CLI: files, summary contract, errors, no mixing."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ntklab.cli import main
from ntklab.config import load_config

TINY = [
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
    "seeds=2",
    "--set",
    "train.steps=40",
    "--set",
    "arch.width=8",
    "--set",
    "fit.bootstrap=50",
    "-q",
]


def test_tiny_data_scaling_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "alpha" in printed and "entk" in printed and "nn" in printed
    for name in ("config.toml", "results.csv", "summary.json", "scaling.png", "units.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["experiment"] == "data-scaling"
    assert set(summary["exponents"]) == {"nn", "entk"}
    for e in summary["exponents"].values():
        assert np.isfinite(e["alpha"]) and e["ci_low"] <= e["alpha"] <= e["ci_high"]
    # under-trained networks are said beside the exponents, and only then
    flagged = summary["training"]["still_falling"] + summary["training"]["improving_at_end"]
    assert ("network training: Of the networks" in printed) == bool(flagged)
    assert summary["seconds"] > 0
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["experiment", "method", "n", "width", "seed", "step", "metric", "value"]
    ns = sorted({int(r["n"]) for r in rows if r["method"] == "entk"})
    assert ns == [32, 64, 128]
    seeds = {r["seed"] for r in rows if r["method"] == "nn"}
    assert seeds == {"0", "1"}

    # a second run with the same config reuses every unit and gives the same table
    before = (out / "results.csv").read_text()
    assert main(["run", "--out", str(out), *TINY]) == 0
    assert (out / "results.csv").read_text() == before
    assert json.loads((out / "summary.json").read_text())["units"]["computed"] == 0

    # a different config into the same directory is refused
    assert main(["run", "--out", str(out), *TINY, "--set", "seeds=3"]) == 2
    assert "holds a different config" in capsys.readouterr().err

    # a run directory recorded by an earlier version, whose config had no kernel.memory_budget_mb
    # field (and so hashed differently), resumes: the field takes its default, as before it existed
    meta = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**meta, "digest": "0123456789ab"}))
    toml = (out / "config.toml").read_text()
    assert "memory_budget_mb = 2048\n" in toml
    (out / "config.toml").write_text(toml.replace("memory_budget_mb = 2048\n", ""))
    assert main(["run", "--out", str(out), *TINY]) == 0
    assert (out / "results.csv").read_text() == before
    assert json.loads((out / "run.json").read_text())["digest"] == meta["digest"]
    # ... but not when the record holds a value the new config changes
    (out / "run.json").write_text(json.dumps({**meta, "digest": "0123456789ab"}))
    assert main(["run", "--out", str(out), *TINY, "--set", "kernel.memory_budget_mb=1024"]) == 2
    assert "holds a different config" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--set", "data.name=imagenet"], ["imagenet", "allowed"]),
        (["--set", "data.n_max=99999"], ["n_max = 99999", "larger than the training pool"]),
        (["--set", "arch.width=-1"], ["arch.width", "-1"]),
        (["--set", "train.lrr=0.1"], ["train.lrr", "did you mean train.lr"]),
    ],
)
def test_bad_input_exit_2_one_sentence_no_traceback(
    args: list[str], words: list[str], tmp_path: Path
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ntklab", "run", "--out", str(tmp_path / "r"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip()
    assert line.count("\n") == 0, line
    for w in words:
        assert w in line
    assert not (tmp_path / "r").exists()  # failed before any work


def test_config_show_prints_resolved_toml(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "--set", "experiment=kernel-evolution"]) == 0
    text = capsys.readouterr().out
    assert 'experiment = "kernel-evolution"' in text and "[evolution]" in text


def test_infinite_kernel_blocks_assemble_to_the_whole_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 16 points (ragged last block) reassemble to kernel_fn on all n points."""
    from ntklab.experiments import data_scaling
    from ntklab.experiments.common import build_spec, eval_points
    from ntklab.run.context import RunContext

    monkeypatch.setattr(data_scaling, "INFINITE_BLOCK", 16)
    cfg = load_config(
        None,
        [
            "arch.name='mlp'",
            "arch.depth=2",
            "data.n_min=8",
            "data.n_max=40",
            "data.n_val=8",
            "data.n_test=12",
            "methods=['ntk', 'nngp']",
        ],
    )
    ctx = RunContext(cfg, progress=False)
    units = data_scaling.infinite_units(cfg, 40, 1)
    assert len(units) == 3 + 6  # 3 cross column blocks, 3·4/2 train blocks on/above the diagonal
    results = {u.key: u.function()(ctx, **u.args) for u in units}
    got = data_scaling.infinite_result(cfg, 40, 1, results)
    s = ctx.seed_splits(1)  # the blocks are on repetition 1's own training points
    spec = build_spec(cfg.arch, s.num_outputs)
    xt = torch.tensor(s.x_train[:40], dtype=torch.float64)
    want = spec.kernel_fn(xt, None)
    cross = spec.kernel_fn(torch.tensor(eval_points(s), dtype=torch.float64), xt)
    for k in ("ntk", "nngp"):
        np.testing.assert_allclose(got[k]["train"], want[k].numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(got[k]["cross"], cross[k].numpy(), rtol=1e-12, atol=1e-14)
        assert np.array_equal(got[k]["train"], got[k]["train"].T)
    del results[units[-1].key]
    assert data_scaling.infinite_result(cfg, 40, 1, results) is None
