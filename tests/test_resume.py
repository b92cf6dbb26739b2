"""Sweeps that resume after a crash: kill -9 / Ctrl-C mid-sweep, corrupt entries, failed units.

A small data-scaling sweep (2 seeds x (1 eNTK + 3 trainings) = 8 units) is run; the interrupted
and resumed run must give the same ``results.csv``, byte for byte, as an uninterrupted run in
another cache, and must not recompute any unit that was already stored.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ntklab.cli import main

SWEEP = [
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
    "train.steps=100",  # ~1 s a training: the interrupt, sent once 1 unit is stored, lands mid-sweep
    "--set",
    "arch.width=8",
    "--set",
    "fit.bootstrap=50",
    "--set",
    "device='cpu'",
    "-q",
]
TOTAL = 8
# lr 100 with heavy momentum: the loss of some trainings becomes NaN (FloatingPointError)
DIVERGENT = [
    "--set",
    "train.optimizer='sgd'",
    "--set",
    "train.lr=100",
    "--set",
    "train.schedule='constant'",
    "--set",
    "train.momentum=0.99",
]


def stored(cache: Path) -> dict[str, tuple[int, int]]:
    """Complete store entries (never the ``.tmp-*`` files) -> (inode, mtime_ns)."""
    out = {}
    for p in (cache / "units").glob("*/*.ntk"):
        st = p.stat()
        out[p.name] = (st.st_ino, st.st_mtime_ns)
    return out


def cli(args: list[str], cache: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m ntklab ARGS`` with a private cache."""
    env = {**os.environ, "NTKLAB_CACHE_DIR": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "ntklab", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def units_json(out: Path) -> dict[str, dict]:
    """``units.json`` by label."""
    return {u["label"]: u for u in json.loads((out / "units.json").read_text())}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run of SWEEP in its own cache (a subprocess, like the runs it is compared with)."""
    root = tmp_path_factory.mktemp("reference")
    proc = cli(["run", "--out", str(root / "run"), *SWEEP], root / "cache")
    assert proc.returncode == 0, proc.stderr
    return root / "run"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_interrupted_sweep_resumes_to_identical_results(
    sig: signal.Signals, reference: Path, tmp_path: Path
) -> None:
    cache, out = tmp_path / "cache", tmp_path / "run"
    args = ["run", "--out", str(out), *SWEEP]
    env = {**os.environ, "NTKLAB_CACHE_DIR": str(cache)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ntklab", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a shell runs background jobs with SIGINT ignored, and Python keeps an ignored SIGINT:
        # give the sweep the default handler, as in a terminal
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 90
    while not stored(cache):  # interrupt as soon as the first unit is stored
        assert proc.poll() is None, f"the sweep ended before it could be interrupted: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "no unit was stored in 90 s"
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 130 and "run the same command again to resume" in err
    before = stored(cache)
    assert 1 <= len(before) < TOTAL, len(before)
    assert not (out / "results.csv").exists()

    res = cli(args, cache)
    assert res.returncode == 0, res.stderr
    assert (out / "results.csv").read_text() == (reference / "results.csv").read_text()
    summary = json.loads((out / "summary.json").read_text())
    ref_summary = json.loads((reference / "summary.json").read_text())
    assert summary["exponents"] == ref_summary["exponents"]
    assert summary["units"] == {
        "total": TOTAL,
        "computed": TOTAL - len(before),
        "cached": len(before),
        "failed": 0,
    }
    after = stored(cache)
    assert len(after) == TOTAL
    for name, stamp in before.items():  # completed units were not rewritten
        assert after[name] == stamp, name
    this_run = [u["this_run"] for u in units_json(out).values()]
    assert this_run.count("cached") == len(before) and this_run.count("computed") == TOTAL - len(before)


def test_corrupt_or_partial_entries_are_recomputed(
    reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cache, out = tmp_path / "cache", tmp_path / "run"
    monkeypatch.setenv("NTKLAB_CACHE_DIR", str(cache))
    assert main(["run", "--out", str(out), *SWEEP]) == 0
    entries = sorted((cache / "units").glob("*/*.ntk"))
    truncated, flipped = entries[0], entries[1]
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    data = bytearray(flipped.read_bytes())
    data[-5] ^= 0xFF  # same size, one byte altered: only the checksum can tell
    flipped.write_bytes(bytes(data))
    # leftovers of killed writers: a young one is kept (it may be in use), an old one swept
    young, old = truncated.parent / ".tmp-young", truncated.parent / ".tmp-old"
    young.write_bytes(b"garbage")
    old.write_bytes(b"garbage")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    untouched = {k: v for k, v in stored(cache).items() if k not in (truncated.name, flipped.name)}

    caplog.set_level(logging.WARNING, logger="ntklab")
    assert main(["run", "--out", str(out), *SWEEP]) == 0
    assert "unreadable" in caplog.text and flipped.stem in caplog.text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["units"]["computed"] == 2 and summary["units"]["cached"] == TOTAL - 2
    assert (out / "results.csv").read_text() == (reference / "results.csv").read_text()
    after = stored(cache)
    assert all(after[k] == v for k, v in untouched.items())
    assert young.exists() and not old.exists()


def test_failed_units_are_recorded_and_only_they_are_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cache, out = tmp_path / "cache", tmp_path / "run"
    monkeypatch.setenv("NTKLAB_CACHE_DIR", str(cache))
    args = ["run", "--out", str(out), *SWEEP, *DIVERGENT]
    assert main(args) == 1  # some units failed, the sweep finished
    printed = capsys.readouterr().out
    assert "failed (re-run with --retry-failed)" in printed and "FloatingPointError" in printed
    summary = json.loads((out / "summary.json").read_text())
    failed = {f["unit"] for f in summary["failed_units"]}
    assert failed and all(label.startswith("train") for label in failed)
    assert summary["units"]["failed"] + summary["units"]["computed"] == TOTAL
    assert (out / "results.csv").is_file() and (out / "scaling.png").is_file()
    assert all("FloatingPointError" in f["error"] for f in summary["failed_units"])

    # status lists them, with their error
    assert main(["status", str(out)]) == 0
    status = capsys.readouterr().out
    assert f"{TOTAL - len(failed)} done, 0 missing, {len(failed)} failed" in status
    for label in failed:
        assert any(
            line.startswith("failed") and label in line and "FloatingPointError" in line
            for line in status.splitlines()
        )

    # a plain re-run does not retry them; --retry-failed reruns exactly them (they fail again)
    done = stored(cache)
    assert main(args) == 1
    assert {u["this_run"] for u in units_json(out).values()} == {"cached", "failed"}
    assert all(units_json(out)[label].get("seconds") is None for label in failed)  # not run
    assert main([*args, "--retry-failed"]) == 1
    runs = units_json(out)
    assert {label for label, u in runs.items() if u["this_run"] == "failed"} == failed
    assert all(runs[label].get("seconds") is not None for label in failed)  # run again
    assert {u["this_run"] for label, u in runs.items() if label not in failed} == {"cached"}
    assert stored(cache) == done


def test_transient_failure_is_fixed_by_retry_failed(
    reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ntklab.experiments.units as unit_functions

    cache, out = tmp_path / "cache", tmp_path / "run"
    monkeypatch.setenv("NTKLAB_CACHE_DIR", str(cache))
    real = unit_functions.train_network

    def flaky(ctx, n, seed_index, **kw):  # e.g. a node that ran out of memory
        if n == 64:
            raise MemoryError("simulated")
        return real(ctx, n, seed_index, **kw)

    monkeypatch.setattr(unit_functions, "train_network", flaky)
    assert main(["run", "--out", str(out), *SWEEP, "--workers", "1"]) == 1  # in-process: sees the patch
    monkeypatch.setattr(unit_functions, "train_network", real)
    assert main(["status", str(out)]) == 0
    kept = stored(cache)
    assert len(kept) == TOTAL - 2
    assert main(["run", "--out", str(out), *SWEEP, "--retry-failed"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["units"] == {"total": TOTAL, "computed": 2, "cached": TOTAL - 2, "failed": 0}
    assert (out / "results.csv").read_text() == (reference / "results.csv").read_text()
    assert all(stored(cache)[k] == v for k, v in kept.items())


def test_status_of_a_partial_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cache, out = tmp_path / "cache", tmp_path / "run"
    monkeypatch.setenv("NTKLAB_CACHE_DIR", str(cache))
    assert main(["run", "--out", str(out), *SWEEP, "--set", "methods=['entk']"]) == 0
    next(iter((cache / "units").glob("*/*.ntk"))).unlink()  # as if the run had been killed
    capsys.readouterr()
    assert main(["status", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sorted(line.split()[0] for line in lines[:-1]) == ["done", "missing"]
    assert lines[-1].startswith("1 done, 1 missing, 0 failed")
    (out / "run.json").unlink()
    assert main(["status", str(out)]) == 2
    assert "not an ntklab run directory" in capsys.readouterr().err


def test_worker_processes_give_identical_results(reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = cli(["run", "--out", str(out), *SWEEP, "--workers", "2"], tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    assert (out / "results.csv").read_text() == (reference / "results.csv").read_text()


# ----------------------------------------------------------------------------- dependencies


def constant(ctx: object, value: float) -> dict:
    """A unit function: a stored value."""
    import numpy as np

    return {"x": np.array([value])}


def plus_one(ctx: object, needs: str) -> dict:
    """A unit function that reads another unit's stored result (``ctx.store``)."""
    return {"x": ctx.store.load(needs)["x"] + 1}


def test_units_run_after_the_units_they_read(tmp_path: Path) -> None:
    from types import SimpleNamespace

    import numpy as np

    from ntklab.run.local import LocalExecutor
    from ntklab.run.store import Store
    from ntklab.run.units import Unit

    store = Store(tmp_path / "units")
    a = Unit("a", f"{__name__}:constant", {"value": 1.0}, {}, label="a")
    b = Unit("b", f"{__name__}:plus_one", {"needs": a.key}, {}, label="b", after=(a.key,))
    nan = Unit("a", f"{__name__}:constant", {"value": float("nan")}, {}, label="nan")
    c = Unit("b", f"{__name__}:plus_one", {"needs": nan.key}, {}, label="c", after=(nan.key,))
    ctx = SimpleNamespace(store=store)
    out = LocalExecutor().run([b, c, a, nan], ctx, store, progress=False)  # dependants planned first
    assert sorted(out.computed) == sorted([a.key, b.key])
    assert np.array_equal(store.load(b.key)["x"], [2.0])
    assert "NaN or inf" in out.failed[nan.key]  # a non-finite array result is a failure
    assert "DependencyError" in out.failed[c.key] and store.failure(c.key) is not None
