"""The Ray executor: same results as the local executor, bit for bit on CPU; failures and retries.

Ray is installed by the test command (``scripts/install.sh test,ray``); this test is not skipped.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import ray

from ntklab.cli import main
from ntklab.config import load_config
from ntklab.errors import NtkLabError
from ntklab.experiments import data_scaling
from ntklab.run.execute import config_payload, run_in_worker
from ntklab.run.ray_executor import RayExecutor, task_options
from ntklab.run.runner import run_experiment
from ntklab.run.store import Store
from ntklab.run.units import Unit

OVERRIDES = [
    "data.num_samples=1000",
    "data.n_min=32",
    "data.n_max=128",
    "data.n_val=32",
    "data.n_test=100",
    "seeds=2",
    "train.steps=40",
    "arch.width=8",
    "fit.bootstrap=50",
    "device='cpu'",
]
DIVERGENT = ["train.optimizer='sgd'", "train.lr=100", "train.schedule='constant'", "train.momentum=0.99"]
TOTAL = 8


def cli_args(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)] + ["-q"]


def this_run(out: Path) -> dict[str, str]:
    return {u["label"]: u["this_run"] for u in json.loads((out / "units.json").read_text())}


def test_ray_executor_matches_local_and_retries_only_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NTKLAB_CACHE_DIR", str(tmp_path / "cache-local"))
    assert main(["run", "--out", str(tmp_path / "local"), *cli_args(OVERRIDES)]) == 0

    # a local Ray instance with 2 CPUs, its own cache: every unit is a Ray task
    monkeypatch.setenv("NTKLAB_CACHE_DIR", str(tmp_path / "cache-ray"))
    store = Store(tmp_path / "cache-ray" / "units")
    executor = RayExecutor(num_cpus=2)
    try:
        out = tmp_path / "ray"
        summary = run_experiment(
            load_config(None, OVERRIDES), out, executor=executor, store=store, progress=False
        )
        assert ray.is_initialized() and ray.cluster_resources()["CPU"] == 2
        assert summary["executor"] == "ray"
        assert summary["units"] == {"total": TOTAL, "computed": TOTAL, "cached": 0, "failed": 0}
        assert (out / "results.csv").read_text() == (tmp_path / "local" / "results.csv").read_text()

        # NaN losses on Ray workers: recorded, the sweep finishes; --retry-failed reruns only them
        cfg = load_config(None, OVERRIDES + DIVERGENT)
        bad = tmp_path / "divergent"
        summary = run_experiment(cfg, bad, executor=executor, store=store, progress=False)
        failed = {f["unit"] for f in summary["failed_units"]}
        assert failed and summary["units"]["computed"] == TOTAL - 2 - len(failed)
        assert summary["units"]["cached"] == 2  # the eNTK units do not depend on training: shared
        assert all("FloatingPointError" in f["error"] for f in summary["failed_units"])
        key = summary["failed_units"][0]["key"]
        assert "loss became" in store.failure(key)["error"]
        summary = run_experiment(cfg, bad, executor=executor, store=store, retry_failed=True, progress=False)
        runs = this_run(bad)
        assert {label for label, r in runs.items() if r == "failed"} == failed
        assert {r for label, r in runs.items() if label not in failed} == {"cached"}
    finally:
        executor.close()
    assert not ray.is_initialized()


def test_task_options_carry_the_units_resources() -> None:
    unit = Unit("entk", "m:f", {}, {}, label="eNTK", resources={"num_cpus": 4, "num_gpus": 1, "big_mem": 1})
    opts = task_options(unit)
    assert opts["num_cpus"] == 4 and opts["num_gpus"] == 1 and opts["resources"] == {"big_mem": 1}
    assert unit.threads == 4 and opts["max_retries"] >= 1


def test_worker_refuses_a_store_that_is_not_the_drivers(tmp_path: Path) -> None:
    """On a cluster, a node that does not mount the shared store must not write elsewhere."""
    cfg = load_config(None, OVERRIDES)
    driver = Store(tmp_path / "shared")
    driver.ensure_id()
    unit = data_scaling.plan(cfg)[0]
    cfg_json, digest = config_payload(type("Ctx", (), {"cfg": cfg})())
    other = tmp_path / "node-local"  # what a node without the shared mount would see
    res = run_in_worker(cfg_json, digest, str(other), driver.read_id(), unit)
    assert isinstance(res["user_error"], NtkLabError)
    assert "not the driver's" in str(res["user_error"]) and "NTKLAB_CACHE_DIR" in str(res["user_error"])
    assert not (other / unit.key[:2]).exists()


def test_missing_ray_is_one_sentence(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    assert main(["run", "--executor", "ray", *cli_args(OVERRIDES)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'ntklab[ray]'" in err
