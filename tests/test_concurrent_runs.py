"""Two ``ntklab run`` processes on one store at once: they share the work, never duplicate it,
and both give the results of a solo run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tiny import tiny_sweep

SWEEP = tiny_sweep(seeds=2, steps=150)
TOTAL = 6  # 2 seeds x (2 trainings + 1 eNTK)


def command(out: Path) -> list[str]:
    sets = [a for s in SWEEP for a in ("--set", s)]
    return [sys.executable, "-m", "ntklab", "run", "--out", str(out), "--workers", "1", "-q", *sets]


def test_two_runs_at_once_share_the_units_and_match_a_solo_run(tmp_path: Path) -> None:
    env = {**os.environ, "NTKLAB_CACHE_DIR": str(tmp_path / "shared")}
    runs = [tmp_path / "a", tmp_path / "b"]
    procs = [
        subprocess.Popen(command(out), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for out in runs
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err
    solo_env = {**os.environ, "NTKLAB_CACHE_DIR": str(tmp_path / "solo-cache")}
    solo = subprocess.run(command(tmp_path / "solo"), env=solo_env, capture_output=True, text=True)
    assert solo.returncode == 0, solo.stderr

    expected = (tmp_path / "solo" / "results.csv").read_text()
    counts = []
    for out in runs:
        assert (out / "results.csv").read_text() == expected
        units = json.loads((out / "summary.json").read_text())["units"]
        assert units["total"] == TOTAL and units["failed"] == 0
        assert units["computed"] + units["cached"] == TOTAL
        counts.append(units["computed"])
    # every unit computed exactly once, by one run or the other (two runs could both compute a
    # unit only by breaking the same stale lease at once; no lease goes stale here)
    assert sum(counts) == TOTAL, counts
    store = tmp_path / "shared" / "units"
    assert len(list(store.glob("*/*.ntk"))) == TOTAL
    assert not list(store.glob("*/.tmp-*")) and not list(store.glob("leases/*"))
