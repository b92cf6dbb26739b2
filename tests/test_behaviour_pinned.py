"""Behaviour pinned: each experiment on a tiny config gives the same ``results.csv`` rows as the
pinned copy in ``tests/data/pinned/`` (timing rows aside).

The pinned files were written by this test's ``--write-pinned`` path on the code before the
architecture was reorganized; a refactor that changes any number, row or key fails here. Values
are compared with a relative tolerance of 1e-4 (training amplifies the last-bit differences that
another CPU's kernels may give); keys (experiment, method, n, width, seed, step, metric) exactly.

Regenerate only for an intended change in behaviour:
``NTKLAB_WRITE_PINNED=1 python -m pytest tests/test_behaviour_pinned.py``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch

from ntklab.cli import main

PINNED = Path(__file__).parent / "data" / "pinned"
COMMON = [
    "data.num_samples=600",
    "data.n_val=16",
    "data.n_test=40",
    "arch.width=8",
    "fit.bootstrap=20",
    "device='cpu'",
]
CONFIGS = {
    "data-scaling": [
        "data.n_min=32",
        "data.n_max=64",
        "seeds=2",
        "train.steps=20",
        "methods=['nn', 'entk', 'ntk']",
    ],
    "width-scaling": [
        "data.n_min=32",
        "data.n_max=64",
        "seeds=2",
        "train.steps=20",
        "widths=[8, 16]",
        "lr_grid=[0.01, 0.03]",
        "probe_widths=[64]",
        "probe_size=16",
    ],
    "pretrained-kernel": [
        "data.n_min=32",
        "data.n_max=64",
        "seeds=2",
        "train.steps=20",
        "train.early_stopping=false",
        "pretrained.n0=[32]",
    ],
    "kernel-evolution": [
        "data.n_min=8",
        "data.n_max=32",
        "evolution.n=32",
        "evolution.regress_n=32",
        "evolution.probe_train=12",
        "evolution.probe_test=8",
        "evolution.n_checkpoints=3",
        "evolution.top_eigenvalues=3",
        "train.steps=12",
        "train.batch_size=16",
        "kernel.ridges=[0.0, 0.01]",
    ],
}
KEYS = ("experiment", "method", "n", "width", "seed", "step", "metric")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """One torch thread, as every executor runs a unit (the pinned values were made so)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rows_of(path: Path) -> dict[tuple[str, ...], float]:
    """``results.csv`` as {key columns: value}, timing rows (metric ``seconds``) left out."""
    with open(path) as f:
        rows = [r for r in csv.DictReader(f) if "seconds" not in r["metric"]]
    return {tuple(r[k] for k in KEYS): float(r["value"]) for r in rows}


@pytest.mark.parametrize("experiment", sorted(CONFIGS))
def test_results_rows_are_the_pinned_ones(experiment: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("NTKLAB_CACHE_DIR", str(tmp_path / "cache"))
    sets = [f"experiment={experiment}", *COMMON, *CONFIGS[experiment]]
    args = [
        "run",
        *[a for s in sets for a in ("--set", s)],
        "--out",
        str(tmp_path / "run"),
        "--workers",
        "1",
        "-q",
    ]
    assert main(args) == 0
    got = tmp_path / "run" / "results.csv"
    pinned = PINNED / f"{experiment}.csv"
    if os.environ.get("NTKLAB_WRITE_PINNED") == "1":
        PINNED.mkdir(parents=True, exist_ok=True)
        lines = got.read_text().splitlines(keepends=True)
        pinned.write_text(lines[0] + "".join(ln for ln in lines[1:] if ",seconds," not in ln))
    want, have = rows_of(pinned), rows_of(got)
    assert sorted(have) == sorted(want), f"{experiment}: the rows' keys differ from the pinned ones"
    for key, value in want.items():
        assert have[key] == pytest.approx(value, rel=1e-4, abs=1e-7, nan_ok=True), f"{experiment} {key}"
