"""Memory and disk: checked before any work; a disk that fills mid-run stops it, a rerun resumes."""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections import namedtuple
from pathlib import Path

import pytest

from ntklab.cli import main
from ntklab.config import load_config
from ntklab.errors import ResourceError
from ntklab.experiments import data_scaling
from ntklab.run.resources import HEADROOM, Shape, check_resources
from ntklab.run.store import Store
from tiny import tiny_sweep

TINY = tiny_sweep(seeds=2, steps=20)
TOTAL = 6  # 2 seeds x (2 trainings + 1 eNTK)


def args(out: Path, sets: list[str]) -> list[str]:
    return ["run", "--out", str(out), "--workers", "1", "-q", *[a for s in sets for a in ("--set", s)]]


def entries(cache: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (cache / "units").glob("*/*.ntk")}


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_kernel_larger_than_the_memory_budget_stops_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("NTKLAB_CACHE_DIR", str(cache))
    # n = 1400: K(train, train) 15.0 MiB + K(val+test, train) 1.4 MiB in float64 > 16 MiB
    sets = [*TINY, "data.num_samples=2000", "data.n_min=1400", "data.n_max=1400", "data.n_val=32"]
    sets += ["data.n_test=100", "kernel.memory_budget_mb=16"]
    assert main(args(tmp_path / "run", sets)) == 2
    line = one_line(capsys.readouterr().err)
    assert "holds a 17 MiB kernel in memory, more than kernel.memory_budget_mb = 16" in line, line
    assert "set kernel.memory_budget_mb to at least 17" in line
    assert entries(cache) == {} and not (tmp_path / "run").exists()


def test_kernels_that_do_not_fit_the_free_disk_stop_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("NTKLAB_CACHE_DIR", str(cache))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(2**30, 2**30 - 2**20, 2**20))
    assert main(args(tmp_path / "run", TINY)) == 2
    line = one_line(capsys.readouterr().err)
    assert "this run needs 17 MiB of disk for its kernels in" in line, line
    assert "(1 MiB of results and 16 MiB to spare), but only 1 MiB is free there" in line
    assert entries(cache) == {}


def test_assembled_kernel_files_count_against_the_disk_until_they_exist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With n_max > kernel.block the analysis assembles each repetition's eNTK into a file of
    n² float32 in the store: the check adds the files not there yet to the units' results."""
    cfg = load_config(None, [*TINY, "kernel.block=16"])
    store = Store(tmp_path / "cache" / "units")
    files = data_scaling.kernel_files(cfg, store.root / "kernels")
    assert [b for _, b in files] == [4 * 64 * 64] * 2  # one eNTK per repetition
    units, shape = data_scaling.plan(cfg), Shape(66, 10, "trace")
    got = check_resources(units, shape, store, 2048, files=files)
    assert got["assembled_needs"] == 2 * 4 * 64 * 64 and got["store_needs"] > 0
    just = got["store_needs"] + got["assembled_needs"] + HEADROOM
    check_resources(units, shape, store, 2048, free=lambda p: just, files=files)
    with pytest.raises(ResourceError, match="of assembled kernel files"):
        check_resources(units, shape, store, 2048, free=lambda p: just - 1, files=files)
    for f, _ in files:  # once assembled they cost nothing more
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"")
    assert check_resources(units, shape, store, 2048, files=files)["assembled_needs"] == 0
    # the runner passes them: the one-line refusal names them
    monkeypatch.setenv("NTKLAB_CACHE_DIR", str(tmp_path / "other"))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(2**30, 2**30 - 2**20, 2**20))
    assert main(args(tmp_path / "run", [*TINY, "kernel.block=16"])) == 2
    assert ", 1 MiB of assembled kernel files and 16 MiB to spare)" in one_line(capsys.readouterr().err)


def test_a_disk_that_fills_mid_run_stops_it_and_a_rerun_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ref_cache, cache = tmp_path / "ref-cache", tmp_path / "cache"
    monkeypatch.setenv("NTKLAB_CACHE_DIR", str(ref_cache))
    assert main(args(tmp_path / "ref", TINY)) == 0

    monkeypatch.setenv("NTKLAB_CACHE_DIR", str(cache))
    real_fsync, writes = os.fsync, []

    def fsync(fd: int) -> None:  # the third unit entry finds the disk full
        if "/units/" in os.readlink(f"/proc/self/fd/{fd}"):
            writes.append(fd)
            if len(writes) == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    capsys.readouterr()
    assert main(args(tmp_path / "run", TINY)) == 2
    line = one_line(capsys.readouterr().err)
    assert "is full (no space left to write it); free some space and run the same command again" in line
    kept = entries(cache)
    assert len(kept) == 2 and not list((cache / "units").glob("*/.tmp-*"))  # no partial entry

    monkeypatch.setattr(os, "fsync", real_fsync)  # space was freed
    assert main(args(tmp_path / "run", TINY)) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["units"] == {"total": TOTAL, "computed": TOTAL - 2, "cached": 2, "failed": 0}
    assert all(entries(cache)[k] == v for k, v in kept.items())
    ref = (tmp_path / "ref" / "results.csv").read_text()
    assert (tmp_path / "run" / "results.csv").read_text() == ref
