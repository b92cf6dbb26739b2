"""Running one unit: its environment, its lease, its result in the store; the worker side.

A unit runs with ``torch.set_num_threads(unit.threads)`` (its ``num_cpus``; torch's CPU
kernels give different last bits for different thread counts) and with the global torch /
NumPy / ``random`` generators seeded from its key (a stray use of a global RNG, e.g. dropout
in a user model, then does not depend on which units ran before in the same process). It is
computed only under its lease in the store (:func:`claim_and_run`), so two runs on one store
never compute it twice. Failures (an exception, a NaN loss, a non-finite kernel) are recorded
in the store with their error; user errors (:class:`~ntklab.errors.NtkLabError`) propagate.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import socket
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ntklab.errors import DiskFullError, NtkLabError
from ntklab.run.context import RunContext
from ntklab.run.store import DISK_FULL, Store, encode
from ntklab.run.units import Unit, derive_seed


@contextlib.contextmanager
def unit_environment(unit: Unit) -> Iterator[None]:
    """Threads = ``unit.threads`` and global RNGs seeded from the key; restored afterwards."""
    threads = torch.get_num_threads()
    seed = derive_seed(0, "unit", unit.key)
    np_state, py_state = np.random.get_state(), random.getstate()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    torch.set_num_threads(unit.threads)
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            random.seed(seed)
            yield
    finally:
        torch.set_num_threads(threads)
        np.random.set_state(np_state)
        random.setstate(py_state)


def non_finite_path(obj: Any, path: str = "result") -> str | None:
    """Where a float array with NaN/inf sits in a result (dicts, lists, tuples), or None.

    Python floats are not checked (a NaN 0-1 error is meaningful for regression data).
    """
    if isinstance(obj, np.ndarray):
        if np.issubdtype(obj.dtype, np.floating) and not np.all(np.isfinite(obj)):
            return path
        return None
    if isinstance(obj, torch.Tensor):
        return path if obj.is_floating_point() and not bool(torch.isfinite(obj).all()) else None
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return None
    for k, v in items:
        found = non_finite_path(v, f"{path}[{k!r}]")
        if found:
            return found
    return None


def compute_unit(unit: Unit, ctx: Any, store: Store) -> tuple[float, str | None]:
    """Run one unit and store its result; returns (seconds, error or None). No lease: see
    :func:`claim_and_run`.

    User errors (NtkLabError, a full disk included) propagate: they are mistakes in the config
    or the environment, not unit failures.
    """
    t0 = time.perf_counter()
    try:
        with unit_environment(unit):
            result = unit.function()(ctx, **unit.args)
        where = non_finite_path(result) if unit.check_finite else None
        if where is not None:
            raise FloatingPointError(f"the unit's {where} holds NaN or inf values")
        try:
            entry = encode(result)
        except TypeError as exc:
            raise TypeError(f"the unit's result cannot be stored: {exc}") from None
    except NtkLabError:
        raise
    except OSError as exc:
        if exc.errno in DISK_FULL:
            raise DiskFullError(
                f"the disk is full (unit {unit.label or unit.key}: {exc.strerror}); free some space and "
                "run the same command again to resume."
            ) from None
        return _record(unit, store, exc, t0)
    except Exception as exc:  # noqa: BLE001 - recorded, the sweep goes on
        return _record(unit, store, exc, t0)
    store.write(unit.key, entry)
    return time.perf_counter() - t0, None


def _record(unit: Unit, store: Store, exc: BaseException, t0: float) -> tuple[float, str]:
    """Record the failure of ``unit`` (raised ``exc``); returns (seconds, message)."""
    msg = f"{type(exc).__name__}: {exc}"
    store.record_failure(
        unit.key,
        {
            "unit": unit.label,
            "error": msg,
            "traceback": traceback.format_exc(),
            "host": socket.gethostname(),
        },
    )
    return time.perf_counter() - t0, msg


def claim_and_run(unit: Unit, ctx: Any, store: Store) -> dict[str, Any]:
    """Run ``unit`` unless the store has it or gets it from another process meanwhile.

    The unit is computed only under its lease. While another process holds the lease, this one
    waits for that result (a stale lease, left by a crashed holder, is taken over). Returns
    ``{"key", "seconds", "error", "cached"}``: ``cached`` when the result came from the store
    (this process did not compute it); ``error`` also for a failure that the holder recorded
    while this process waited.
    """
    out: dict[str, Any] = {"key": unit.key, "seconds": 0.0, "error": None, "cached": False}
    before = store.failure(unit.key)
    watch = store.lease_watch()
    while True:
        if store.has(unit.key):
            out["cached"] = True
            return out
        lease = store.try_lease(unit.key)
        if lease is not None:
            break
        if watch.held(store.lease_path(unit.key)):
            time.sleep(store.lease_times.poll_s)
    with lease:
        if store.has(unit.key):  # stored between the check and the lease
            out["cached"] = True
            return out
        now = store.failure(unit.key)
        if now is not None and now != before:  # the previous holder failed while this one waited
            out["error"] = now["error"]
            return out
        out["seconds"], out["error"] = compute_unit(unit, ctx, store)
    return out


@functools.lru_cache(maxsize=2)
def worker_context(cfg_json: str, digest: str, store_root: str) -> RunContext:
    """A RunContext for ``cfg_json`` in a worker process (memoized: data is loaded once per process).

    The config travels as JSON and is rebuilt with :func:`ntklab.config.validate`; the digest
    check guarantees the worker computes for exactly the driver's config. The memo is keyed by
    the whole config and store, so it can never serve another run's data.
    """
    from ntklab.config.loading import validate

    cfg = validate(json.loads(cfg_json))
    if cfg.digest() != digest:
        raise NtkLabError(
            f"the config rebuilt on {socket.gethostname()} has digest {cfg.digest()}, the driver's "
            f"{digest}; install the same ntklab version on every node."
        )
    return RunContext(cfg, progress=False, store=Store(store_root))


def run_in_worker(cfg_json: str, digest: str, store_root: str, store_id: str | None, unit: Unit) -> dict:
    """Run ``unit`` in a worker process (pool or Ray) and store its result there.

    Returns ``{"key", "seconds", "error", "user_error", "cached"}``; a user error (an
    NtkLabError instance) is returned, not raised, so the driver re-raises it as is.
    """
    out: dict[str, Any] = {
        "key": unit.key,
        "seconds": 0.0,
        "error": None,
        "user_error": None,
        "cached": False,
    }
    store = Store(store_root)
    try:
        if store_id is not None and store.read_id() != store_id:
            raise NtkLabError(
                f"the unit store {store_root} is not the driver's on node {socket.gethostname()}; "
                "put NTKLAB_CACHE_DIR on a filesystem that every Ray node mounts at the same path."
            )
        if store.has(unit.key):  # another run (or a retried task) already stored it
            out["cached"] = True
            return out
        ctx = worker_context(cfg_json, digest, store_root)
        out.update(claim_and_run(unit, ctx, store))
    except NtkLabError as err:
        out["user_error"] = err
    return out


def exit_with_parent(parent_pid: int, every_s: float = 1.0) -> None:
    """Worker-process initializer: exit as soon as the driver is gone.

    A driver killed with SIGKILL cannot stop its pool; without this, its workers would finish
    their unit and then wait for work forever. Polling the parent id is portable (no prctl).
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(every_s)
        os._exit(1)

    threading.Thread(target=watch, name="ntklab-exit-with-parent", daemon=True).start()


def config_payload(ctx: Any) -> tuple[str, str]:
    """(config as JSON, its digest): what a worker needs to rebuild the run's context."""
    return json.dumps(ctx.cfg.model_dump(mode="json"), sort_keys=True), ctx.cfg.digest()
