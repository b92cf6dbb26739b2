"""The unit store holds data only: reading an entry never runs code; a bad entry is recomputed.

A store on a shared filesystem is writable by everyone who runs ntklab on it. An entry planted
there (a pickle that runs a command when loaded, with a valid header and checksum) must be
treated as corrupt and computed again, and the command must never run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import socket
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ntklab.cli import main
from ntklab.config import load_config
from ntklab.experiments import data_scaling
from ntklab.run.local import LocalExecutor
from ntklab.run.store import MAGIC, CorruptEntryError, Store, decode, encode
from ntklab.run.units import Unit
from tiny import tiny_sweep

TINY = tiny_sweep(seeds=1, steps=20)


class RunsCommand:
    """Unpickling this runs a shell command (what an attacker would plant)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


def planted_entry(command: str) -> bytes:
    """A pickle that runs ``command``, framed like a current entry: magic, SHA-256, length."""
    payload = pickle.dumps(RunsCommand(command))
    return struct.pack("<8s32sQ", MAGIC, hashlib.sha256(payload).digest(), len(payload)) + payload


def old_pickle_entry(command: str) -> bytes:
    """The same pickle framed like an entry of the former pickle store (blake2b header)."""
    payload = pickle.dumps(RunsCommand(command))
    digest = hashlib.blake2b(payload, digest_size=32).digest()
    return struct.pack("<8s32sQ", b"NTKLAB1\n", digest, len(payload)) + payload


def test_results_round_trip_with_their_types() -> None:
    value = {
        "train": np.arange(12.0).reshape(3, 4),
        "fortran": np.asfortranarray(np.ones((2, 3), np.float32)),
        "scalar": np.float64(0.25),
        "states": {0: {"w": np.zeros((2, 2), np.float32)}, 10: {}},
        "history": [{"step": 0, "lr": 0.1, "train_loss": math.inf}],
        "pair": (1, "a", None, True),
        "$key": [math.nan],
        "tensor": torch.arange(3.0),
        "big": 2**70,
    }
    back = decode(b"".join(encode(value)))
    assert back.keys() == value.keys()
    np.testing.assert_array_equal(back["train"], value["train"])
    assert back["fortran"].dtype == np.float32 and back["fortran"].flags.f_contiguous
    assert type(back["scalar"]) is np.float64 and back["scalar"] == 0.25
    assert list(back["states"]) == [0, 10] and back["states"][0]["w"].shape == (2, 2)
    assert back["history"][0]["train_loss"] == math.inf and math.isnan(back["$key"][0])
    assert back["pair"] == (1, "a", None, True) and type(back["pair"]) is tuple
    assert torch.equal(back["tensor"], value["tensor"]) and back["big"] == 2**70
    assert back["train"].flags.writeable


def test_results_that_are_not_data_are_refused() -> None:
    with pytest.raises(TypeError, match="may hold only"):
        encode({"model": torch.nn.Linear(2, 2)})
    with pytest.raises(TypeError, match="Python objects"):
        encode({"x": np.array([None, 1])})


def test_a_planted_pickle_is_corrupt_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    store = Store(tmp_path / "units")
    store.path("ab" * 12).parent.mkdir(parents=True)
    store.path("ab" * 12).write_bytes(planted_entry(f"touch {marker}"))
    assert store.has("ab" * 12)  # header and size check out: only decoding can tell
    with pytest.raises(CorruptEntryError, match="cannot decode"):
        store.load("ab" * 12)
    assert not marker.exists()


def test_an_entry_whose_array_header_lies_is_corrupt() -> None:
    import io

    # a .npy header claiming a (10^9, 10^9) float64 array over 32 bytes: refused before any
    # memory is allocated for it
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "<f8", "fortran_order": False, "shape": (10**9, 10**9)}
    )
    blob = buf.getvalue() + bytes(32)
    manifest = json.dumps({"format": 1, "value": {"$a": 0}, "arrays": [[0, len(blob)]]}).encode()
    payload = struct.pack("<Q", len(manifest)) + manifest + blob
    bad = struct.pack("<8s32sQ", MAGIC, hashlib.sha256(payload).digest(), len(payload)) + payload
    with pytest.raises(CorruptEntryError, match="size does not match"):
        decode(bad)


def test_run_recomputes_planted_entries_without_running_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, marker = tmp_path / "cache", tmp_path / "pwned"
    monkeypatch.setenv("NTKLAB_CACHE_DIR", str(cache))
    cfg = load_config(None, TINY)
    units = data_scaling.plan(cfg)
    store = Store(cache / "units")
    new, old = units[0].key, units[1].key
    store.path(new).parent.mkdir(parents=True, exist_ok=True)
    store.path(new).write_bytes(planted_entry(f"touch {marker}"))
    legacy = store.path(old).with_suffix(".pkl")  # where the former pickle store kept it
    legacy.parent.mkdir(parents=True, exist_ok=True)
    legacy.write_bytes(old_pickle_entry(f"touch {marker}"))

    out = tmp_path / "run"
    args = ["run", "--out", str(out), "--workers", "1", "-q"] + [a for o in TINY for a in ("--set", o)]
    assert main(args) == 0
    assert not marker.exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["units"]["computed"] == len(units) and summary["units"]["failed"] == 0
    assert isinstance(store.load(new), dict)  # recomputed, now a data entry
    assert legacy.read_bytes() == old_pickle_entry(f"touch {marker}")  # ignored, not loaded


# ----------------------------------------------------------------------------- leases


def constant(ctx: object, value: float) -> dict:
    """A unit function: a stored value."""
    return {"x": np.array([value])}


def test_a_unit_leased_by_a_live_process_is_waited_for_not_computed(tmp_path: Path) -> None:
    import subprocess
    import sys
    import threading

    store = Store(tmp_path / "units")
    unit = Unit("a", f"{__name__}:constant", {"value": 1.0}, {}, label="a")
    other = Unit("a", f"{__name__}:constant", {"value": 2.0}, {}, label="b")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lease = store.lease_path(unit.key)
        lease.parent.mkdir(parents=True)
        lease.write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid, "token": "x"}))
        result: dict = {}
        ctx = SimpleNamespace(store=store)
        t = threading.Thread(
            target=lambda: result.update(out=LocalExecutor().run([unit, other], ctx, store, progress=False))
        )
        t.start()
        t.join(timeout=2.0)
        assert t.is_alive()  # waiting for the holder ...
        assert store.has(other.key) and not store.has(unit.key)  # ... after computing what it could
        store.save(unit.key, {"x": np.array([1.0])})  # the holder stores its result and lets go
        lease.unlink()
        t.join(timeout=10)
        assert not t.is_alive()
    finally:
        holder.kill()
        holder.wait()
    assert result["out"].computed == [other.key] and result["out"].cached == [unit.key]


def test_a_lease_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    import subprocess
    import sys

    store = Store(tmp_path / "units")
    unit = Unit("a", f"{__name__}:constant", {"value": 1.0}, {}, label="a")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lease = store.lease_path(unit.key)
    lease.parent.mkdir(parents=True)
    lease.write_text(json.dumps({"host": socket.gethostname(), "pid": gone.pid, "token": "x"}))
    out = LocalExecutor().run([unit], SimpleNamespace(store=store), store, progress=False)
    assert out.computed == [unit.key] and not lease.exists()


def test_a_lease_without_heartbeat_goes_stale(tmp_path: Path) -> None:
    from ntklab.run.lease import LeaseTimes

    store = Store(tmp_path / "units", LeaseTimes(heartbeat_s=0.1, stale_s=0.5, poll_s=0.05))
    unit = Unit("a", f"{__name__}:constant", {"value": 1.0}, {}, label="a")
    lease = store.lease_path(unit.key)
    lease.parent.mkdir(parents=True)
    lease.write_text(json.dumps({"host": "another-node", "pid": 1, "token": "x"}))  # a lost node
    out = LocalExecutor().run([unit], SimpleNamespace(store=store), store, progress=False)
    assert out.computed == [unit.key]


def test_a_failure_recorded_by_the_holder_is_adopted(tmp_path: Path) -> None:
    import threading

    store = Store(tmp_path / "units")
    unit = Unit("a", f"{__name__}:constant", {"value": 1.0}, {}, label="a")
    lease = store.lease_path(unit.key)
    lease.parent.mkdir(parents=True)
    lease.write_text(json.dumps({"host": "another-node", "pid": 1, "token": "x"}))
    result: dict = {}
    t = threading.Thread(
        target=lambda: result.update(
            out=LocalExecutor().run([unit], SimpleNamespace(store=store), store, progress=False)
        )
    )
    t.start()
    t.join(timeout=1.0)
    store.record_failure(unit.key, {"unit": "a", "error": "MemoryError: on the other node"})
    lease.unlink()
    t.join(timeout=10)
    assert result["out"].failed == {unit.key: "MemoryError: on the other node"}
    assert not store.has(unit.key) and result["out"].computed == []
