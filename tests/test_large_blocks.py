"""The eNTK of more than ``kernel.block`` points as independent block units: the blocks
assemble to the single-unit kernel (in a memory-mapped file of the store), a blocked run gives
the same results as an unblocked one, and an interrupted blocked run recomputes only the
blocks it had not stored."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from ntklab.config import load_config
from ntklab.experiments import data_scaling
from ntklab.experiments.units import entk_at_init
from ntklab.run import results as results_module
from ntklab.run.context import RunContext
from ntklab.run.results import StoredResults
from ntklab.run.runner import run_experiment
from ntklab.run.store import Store

N = 96
SWEEP = [
    "data.num_samples=600",
    "data.n_min=32",
    f"data.n_max={N}",
    "data.n_val=16",
    "data.n_test=50",
    "seeds=1",
    "train.steps=20",
    "arch.width=8",
    "fit.bootstrap=20",
    "methods=['nn', 'entk']",
    "device='cpu'",
]


def config(block: int, *extra: str):
    return load_config(None, [*SWEEP, f"kernel.block={block}", *extra])


def test_small_n_keeps_its_single_unit() -> None:
    """Every n ≤ kernel.block (all defaults) plans the one eNTK unit it always had."""
    cfg = config(8192)
    assert data_scaling.entk_units(cfg, cfg.arch, N, 0) == [data_scaling.entk_unit(cfg, cfg.arch, N, 0)]


@pytest.mark.parametrize("with_store", [False, True], ids=["in-memory", "memmap"])
def test_blocks_assemble_to_the_single_unit_kernel(with_store: bool, tmp_path: Path) -> None:
    """Blocks of 32 points: 3 column blocks of K(eval, train), 3·4/2 train blocks on and above
    the diagonal and the outputs f0; assembled they match the one-unit eNTK to float32
    rounding of the Jacobians (rtol 1e-6 of the largest entry) and are exactly symmetric."""
    cfg = config(32)
    ctx = RunContext(cfg, progress=False, store=Store(tmp_path) if with_store else None)
    units = data_scaling.entk_units(cfg, cfg.arch, N, 0)
    assert len(units) == 1 + 3 + 6
    results = {u.key: u.function()(ctx, **u.args) for u in units}
    got = data_scaling.entk_result(cfg, ctx, cfg.arch, N, 0, results)
    want = entk_at_init(ctx, N, 0)
    assert set(got) == set(want)
    for part in ("train", "cross"):
        scale = np.abs(want[part]).max()
        np.testing.assert_allclose(got[part], want[part], rtol=0, atol=1e-6 * scale)
    for f0 in ("f0_train", "f0_cross"):
        np.testing.assert_array_equal(got[f0], want[f0])
    assert np.array_equal(got["train"], got["train"].T)
    if with_store:  # stored as kernel.block_dtype (float32 by default)
        assert isinstance(got["train"], np.memmap) and got["train"].dtype == np.float32
        assert [p.stat().st_size for p in (tmp_path / "kernels").glob("*.npy")] == [128 + 4 * N * N]
        assert data_scaling.kernel_files(cfg, tmp_path / "kernels") == [
            (next((tmp_path / "kernels").glob("*.npy")), 4 * N * N)
        ]
    del results[units[-1].key]
    assert data_scaling.entk_result(cfg, ctx, cfg.arch, N, 0, results) is None


def test_block_storage_follows_kernel_block_dtype() -> None:
    """float32 blocks (the default) and float64 blocks are different units; float64 blocks keep
    the keys they had before block_dtype existed (no ``dtype`` argument)."""
    f32, f64 = config(32), config(32, "kernel.block_dtype='float64'")
    u32, u64 = data_scaling.entk_units(f32, f32.arch, N, 0), data_scaling.entk_units(f64, f64.arch, N, 0)
    assert [u.args.get("dtype") for u in u32[1:]] == ["float32"] * 9
    assert all("dtype" not in u.args for u in u64)
    assert {u.key for u in u32[1:]}.isdisjoint(u.key for u in u64[1:])
    assert u32[0].key == u64[0].key  # f0 is not a kernel
    ctx = RunContext(f32, progress=False)
    k32 = u32[-1].function()(ctx, **u32[-1].args)["k"]
    k64 = u64[-1].function()(ctx, **u64[-1].args)["k"]
    assert (k32.dtype, k64.dtype) == (np.float32, np.float64)
    np.testing.assert_array_equal(k32, k64.astype(np.float32))


def rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("center", [True, False], ids=["centered", "added"])
def test_blocked_run_gives_the_unblocked_results(center: bool, tmp_path: Path) -> None:
    """results.csv of a blocked and an unblocked run agree to rel 1e-5 (both f0 conventions)."""
    extra = f"train.center_output={str(center).lower()}"
    store = Store(tmp_path / "units")
    one = run_experiment(config(8192, extra), tmp_path / "one", store=store, progress=False)
    many = run_experiment(config(32, extra), tmp_path / "many", store=store, progress=False)
    assert one["units"]["total"] + 9 == many["units"]["total"]
    a, b = rows(tmp_path / "one"), rows(tmp_path / "many")
    assert [(r["method"], r["n"], r["metric"]) for r in a] == [(r["method"], r["n"], r["metric"]) for r in b]
    assert any(r["method"] == "entk" for r in a)
    for ra, rb in zip(a, b):
        assert float(rb["value"]) == pytest.approx(float(ra["value"]), rel=1e-5, abs=1e-12), ra


def test_interrupted_blocked_run_computes_only_the_missing_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four of the ten eNTK units stored before the run (as a killed run leaves them): the run
    computes the other six and the trainings, and its results equal a run from scratch. The
    regressions are kept too: a rerun's analysis solves none of them again."""
    cfg = config(32)
    store = Store(tmp_path / "units")
    ctx = RunContext(cfg, progress=False, store=store)
    entk = data_scaling.entk_units(cfg, cfg.arch, N, 0)
    for u in entk[:4]:
        store.save(u.key, u.function()(ctx, **u.args))
    s = run_experiment(cfg, tmp_path / "run", store=store, progress=False)
    trainings = len(cfg.data.n_grid())
    assert s["units"] == {"total": 10 + trainings, "computed": 6 + trainings, "cached": 4, "failed": 0}
    status = {u["key"]: u["this_run"] for u in json.loads((tmp_path / "run" / "units.json").read_text())}
    assert [status[u.key] for u in entk] == ["cached"] * 4 + ["computed"] * 6
    solved: list[int] = []
    real = data_scaling.regress_grid
    monkeypatch.setattr(data_scaling, "regress_grid", lambda *a, **k: solved.append(1) or real(*a, **k))
    again = run_experiment(cfg, tmp_path / "again", store=store, progress=False)
    assert again["units"]["computed"] == 0 and solved == []
    assert (tmp_path / "again" / "results.csv").read_text() == (tmp_path / "run" / "results.csv").read_text()
    fresh = run_experiment(cfg, tmp_path / "fresh", store=Store(tmp_path / "fresh-units"), progress=False)
    assert fresh["units"]["computed"] == 10 + trainings
    assert len(solved) == len(cfg.data.n_grid())  # one eNTK, every n solved once
    assert (tmp_path / "run" / "results.csv").read_text() == (tmp_path / "fresh" / "results.csv").read_text()


def test_large_entries_are_read_when_asked_and_a_corrupt_one_is_recomputed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every entry above EAGER_BYTES (set to 0), StoredResults reads none up front; the
    memmapped kernel is written block by block and, once on disk, read without its train
    blocks; a block corrupted after it was stored is recomputed when the analysis reads it,
    and results.csv is that of a clean run."""
    monkeypatch.setattr(results_module, "EAGER_BYTES", 0)
    cfg = config(32)
    store = Store(tmp_path / "units")
    clean = run_experiment(cfg, tmp_path / "clean", store=store, progress=False)
    units = data_scaling.plan(cfg)
    stored = StoredResults(units, store)
    assert len(stored) == len({u.key for u in units}) and all(stored.lazy(k) for k in stored)
    assert not stored._eager  # nothing read up front

    # the memmap exists now: the analysis reads the cross blocks and f0, not the train blocks
    ctx = RunContext(cfg, progress=False, store=store)
    reads: list[str] = []
    counting = CountingResults(stored, reads)
    k = data_scaling.entk_result(cfg, ctx, cfg.arch, N, 0, counting)
    entk = data_scaling.entk_units(cfg, cfg.arch, N, 0)
    train_keys = {u.key for u in entk[1:] if u.args["part"] == "train"}
    assert isinstance(k["train"], np.memmap) and not train_keys & set(reads)

    # corrupt one train block and remove the memmap: the next run's analysis meets it
    for f in (tmp_path / "units" / "kernels").glob("*.npy"):
        f.unlink()
    victim = next(u for u in entk[1:] if u.args["part"] == "train")
    path = store.path(victim.key)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    again = run_experiment(cfg, tmp_path / "again", store=store, progress=False)
    status = {u["key"]: u["this_run"] for u in json.loads((tmp_path / "again" / "units.json").read_text())}
    assert status[victim.key] == "computed" and again["units"]["computed"] == 1
    assert (tmp_path / "again" / "results.csv").read_text() == (
        tmp_path / "clean" / "results.csv"
    ).read_text()
    assert clean["units"]["failed"] == again["units"]["failed"] == 0


class CountingResults(dict):
    """A results mapping that records the keys read."""

    def __init__(self, inner: StoredResults, reads: list[str]) -> None:
        super().__init__()
        self.inner, self.reads = inner, reads

    def __contains__(self, key: object) -> bool:
        return key in self.inner

    def __getitem__(self, key: str):
        self.reads.append(key)
        return self.inner[key]

    def get(self, key: str, default=None):
        return self[key] if key in self.inner else default
