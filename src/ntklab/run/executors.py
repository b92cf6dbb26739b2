"""Executors run the units a store does not hold yet; results land in the store.

Every executor has ``run(units, ctx, store, *, retry_failed=False, progress=None) -> Outcome``
and ``close()``:

* ``local`` (:class:`LocalExecutor`) runs units in this process, one after the other, with a
  progress bar over units; with ``workers=N > 1`` it runs N at a time in worker processes
  (``spawn``), each building its own :class:`~ntklab.run.context.RunContext` from the config.
* ``ray`` (:class:`ntklab.run.ray_executor.RayExecutor`) makes each unit a Ray task.

Rules shared by all executors, so that a unit's result depends only on its key:

* a unit runs with ``torch.set_num_threads(unit.threads)`` (its ``num_cpus``; torch's CPU
  kernels give different last bits for different thread counts) and with the global torch /
  NumPy / ``random`` generators seeded from its key (a stray use of a global RNG, e.g. dropout
  in a user model, then does not depend on which units ran before in the same process);
* a unit whose ``after`` units (results it reads from the store) are not all stored is not
  started; if one of them failed, it is recorded as failed too;
* a unit is computed only under its lease in the store (:func:`claim_and_run`), so two runs on
  one store (two ``ntklab run`` processes, two Ray drivers) never compute it twice: a unit that
  another process is computing is held back while others can start (:class:`Schedule`), then
  read from the store; ``Outcome.computed`` counts what this process computed,
  ``Outcome.cached`` what it read;
* failures (an exception, a NaN loss, a non-finite kernel, a worker that died) are recorded in
  the store with their error and the sweep goes on; they are reported at the end and retried
  only when asked (``retry_failed``). User errors (:class:`~ntklab.errors.NtkLabError`: a
  mistake in the config or data) stop the sweep: every unit would hit them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import multiprocessing
import os
import random
import socket
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ntklab.errors import DiskFullError, NtkLabError
from ntklab.progress import progress_bar
from ntklab.run.store import DISK_FULL, Store, encode
from ntklab.run.units import Unit, derive_seed

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What running a set of units gave (keys)."""

    computed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, key: str, seconds: float, error: str | None) -> None:
        """Count one finished unit."""
        self.seconds[key] = seconds
        if error is None:
            self.computed.append(key)
        else:
            self.failed[key] = error

    def merge(self, other: Outcome) -> None:
        """Fold in the outcome of a second pass over some of the same units."""
        for k in other.computed:
            if k in self.cached:
                self.cached.remove(k)
            self.failed.pop(k, None)
            if k not in self.computed:
                self.computed.append(k)
        for k, e in other.failed.items():
            if k in self.cached:
                self.cached.remove(k)
            self.failed[k] = e
        self.seconds.update(other.seconds)


# ----------------------------------------------------------------------------- running one unit


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


def execute_unit(unit: Unit, ctx: Any, store: Store) -> tuple[str, float, str | None]:
    """Run one unit (under its lease) and store its result; returns (key, seconds, error or None).

    A result that another process stored meanwhile counts as done (0 seconds, no error).
    User errors (NtkLabError) propagate: they are mistakes in the config, not unit failures.
    """
    res = claim_and_run(unit, ctx, store)
    return unit.key, res["seconds"], res["error"]


# ----------------------------------------------------------------------------- worker side


@functools.lru_cache(maxsize=2)
def worker_context(cfg_json: str, digest: str, store_root: str) -> Any:
    """A RunContext for ``cfg_json`` in a worker process (memoized: data is loaded once per process).

    The config travels as JSON and is rebuilt with :func:`ntklab.config.validate`; the digest
    check guarantees the worker computes for exactly the driver's config. The memo is keyed by
    the whole config and store, so it can never serve another run's data.
    """
    from ntklab.config import validate
    from ntklab.run.context import RunContext

    cfg = validate(json.loads(cfg_json))
    if cfg.digest() != digest:
        raise NtkLabError(
            f"the config rebuilt on {socket.gethostname()} has digest {cfg.digest()}, the driver's "
            f"{digest}; install the same ntklab version on every node."
        )
    ctx = RunContext(cfg, progress=False)
    ctx.store = Store(store_root)  # type: ignore[attr-defined]  # units that read other units' results
    return ctx


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


# ----------------------------------------------------------------------------- scheduling


def with_threads(units: Sequence[Unit], threads: int | None, gpus: float | None = None) -> list[Unit]:
    """``units`` with ``num_cpus = threads`` (torch threads and Ray CPUs) and ``num_gpus = gpus``
    where given. Resources are not part of the key: the units stay the same units."""
    extra: dict[str, float] = {}
    if threads is not None:
        extra["num_cpus"] = threads
    if gpus is not None:
        extra["num_gpus"] = gpus
    if not extra:
        return list(units)
    return [dataclasses.replace(u, resources={**u.resources, **extra}) for u in units]


def pending(units: Sequence[Unit], store: Store, retry_failed: bool) -> tuple[list[Unit], Outcome]:
    """Units still to run (cached ones counted; previously failed ones skipped unless retried)."""
    out = Outcome()
    todo = []
    seen = set()
    for u in units:
        if u.key in seen:
            continue
        seen.add(u.key)
        if store.has(u.key):
            out.cached.append(u.key)
            continue
        failure = None if retry_failed else store.failure(u.key)
        if failure is not None:
            out.failed[u.key] = failure["error"]
        else:
            todo.append(u)
    return todo, out


class Schedule:
    """Hands out units whose ``after`` units are stored, in plan order.

    A unit whose dependency failed (in this run or before) is failed without running. With
    other runs on the same store, a unit another process is computing (it holds the unit's
    lease) is held back while other units can start, and counted as cached once that process
    stores it (or as failed if it records a failure); see :meth:`wait_for_others`.
    """

    def __init__(self, todo: Sequence[Unit], store: Store, out: Outcome) -> None:
        self.waiting = list(todo)
        self.store, self.out = store, out
        self.labels = {u.key: u.label for u in todo}
        self.running: set[str] = set()
        self.failures = {u.key: store.failure(u.key) for u in todo}  # as they were before this run
        self.watch = store.lease_watch()
        self.elsewhere = False  # some waiting unit is being computed by another process

    def _blocked_by(self, u: Unit) -> tuple[str | None, bool]:
        """(failed dependency key or None, whether some dependency is still to come)."""
        later = False
        for k in u.after:
            if k in self.out.failed:
                return k, False
            if k in self.running or any(w.key == k for w in self.waiting if w is not u):
                later = True
            elif not self.store.has(k):
                return k, False
        return None, later

    def _elsewhere(self, u: Unit) -> str | None:
        """``"done"`` when another process stored ``u`` or recorded its failure since this run
        began (counted as cached or failed), ``"busy"`` while another process computes it,
        None when it is free to start here."""
        if self.store.has(u.key):
            self.out.cached.append(u.key)
            return "done"
        fail = self.store.failure(u.key)
        if fail is not None and fail != self.failures.get(u.key):
            self.out.failed[u.key] = fail["error"]
            return "done"
        return "busy" if self.watch.held(self.store.lease_path(u.key)) else None

    def ready(self, limit: int | None = None) -> list[Unit]:
        """Units that can start now, at most ``limit`` (removed from the waiting list);
        dependants of failures are recorded as failed on the way.

        Ask for no more than can start at once: whether another process computes a unit is
        judged now, and a unit handed out early may be taken by another process meanwhile.
        """
        out: list[Unit] = []
        self.elsewhere = False
        changed = True
        while changed:
            changed = False
            for u in list(self.waiting):
                if limit is not None and len(out) >= limit:
                    break
                bad, later = self._blocked_by(u)
                if bad is not None:
                    self.waiting.remove(u)
                    msg = f"DependencyError: needs unit {self.labels.get(bad, bad)!r}, which failed or is missing"
                    self.store.record_failure(u.key, {"unit": u.label, "error": msg})
                    self.out.add(u.key, 0.0, msg)
                    changed = True
                elif later:
                    continue
                elif (where := self._elsewhere(u)) == "done":
                    self.waiting.remove(u)
                    changed = True
                elif where == "busy":
                    self.elsewhere = True
                else:
                    self.waiting.remove(u)
                    self.running.add(u.key)
                    out.append(u)
        return out

    def wait_for_others(self) -> bool:
        """When units wait only for other processes: sleep one poll interval and return True
        (call :meth:`ready` again); False when nothing is left to wait for."""
        if self.waiting and self.elsewhere:
            time.sleep(self.store.lease_times.poll_s)
            return True
        return False

    def done(self, key: str) -> None:
        """Mark ``key`` as finished (its outcome already added)."""
        self.running.discard(key)

    def __bool__(self) -> bool:
        return bool(self.waiting or self.running)


# ----------------------------------------------------------------------------- local executor


class LocalExecutor:
    """Runs units in this process (``workers=1``) or in ``workers`` spawned processes.

    ``threads`` overrides every unit's ``num_cpus`` (its torch threads); default: as declared.
    """

    name = "local"

    def __init__(self, workers: int = 1, threads: int | None = None) -> None:
        if workers < 1:
            raise NtkLabError(f"--workers must be at least 1; got {workers}.")
        self.workers = workers
        self.threads = threads

    def run(
        self,
        units: Sequence[Unit],
        ctx: Any,
        store: Store,
        *,
        retry_failed: bool = False,
        progress: bool | None = None,
    ) -> Outcome:
        """Run the units ``store`` lacks; ``ctx`` is the driver's RunContext."""
        todo, out = pending(with_threads(units, self.threads), store, retry_failed)
        if not todo:
            return out
        with progress_bar(total=len(todo), desc="units", enabled=progress) as bar:
            if self.workers == 1 or len(todo) == 1:
                self._in_process(todo, ctx, store, out, bar)
            else:
                self._in_pool(todo, ctx, store, out, bar)
        return out

    def _in_process(self, todo: list[Unit], ctx: Any, store: Store, out: Outcome, bar: Any) -> None:
        sched = Schedule(todo, store, out)
        while sched:
            batch = sched.ready(limit=1)
            if not batch:
                if sched.wait_for_others():
                    continue
                break
            for u in batch:
                bar.set_postfix_str(u.label)
                count_result(claim_and_run(u, ctx, store), u, out, bar)
                sched.done(u.key)
        bar.update(len(todo) - bar.n)

    def _in_pool(self, todo: list[Unit], ctx: Any, store: Store, out: Outcome, bar: Any) -> None:
        cfg_json, digest = config_payload(ctx)
        sched = Schedule(todo, store, out)
        mp = multiprocessing.get_context("spawn")
        pool = self._pool(mp)
        futures: dict[Future, Unit] = {}
        try:
            while sched:
                for u in sched.ready(limit=self.workers - len(futures)):
                    futures[pool.submit(run_in_worker, cfg_json, digest, str(store.root), None, u)] = u
                if not futures:
                    if sched.wait_for_others():
                        continue
                    break
                # while units wait for other processes, look again now and then
                timeout = store.lease_times.poll_s if sched.elsewhere else None
                done, _ = wait(futures, timeout=timeout, return_when=FIRST_COMPLETED)
                broken = False
                for f in done:
                    u = futures.pop(f)
                    try:
                        res = f.result()
                    except BrokenProcessPool:  # a worker died (killed, out of memory): blame all in flight
                        broken = True
                        msg = "WorkerDied: a worker process died while running this unit or one beside it"
                        store.record_failure(u.key, {"unit": u.label, "error": msg})
                        res = {"key": u.key, "seconds": 0.0, "error": msg}
                    if res.get("user_error") is not None:
                        raise res["user_error"]
                    count_result(res, u, out, bar)
                    sched.done(u.key)
                if broken:
                    _stop_pool(pool)
                    pool = self._pool(mp)
                    for f, u in list(futures.items()):  # futures of the dead pool: run them again
                        del futures[f]
                        futures[pool.submit(run_in_worker, cfg_json, digest, str(store.root), None, u)] = u
        except BaseException:  # interrupted or a user error: stop the workers now
            _stop_pool(pool)
            raise
        pool.shutdown(wait=True)
        bar.update(len(todo) - bar.n)

    def _pool(self, mp: Any) -> ProcessPoolExecutor:
        """A pool of ``workers`` spawned processes that exit when this process dies."""
        return ProcessPoolExecutor(
            max_workers=self.workers, mp_context=mp, initializer=exit_with_parent, initargs=(os.getpid(),)
        )

    def close(self) -> None:
        """Nothing to release."""


def count_result(res: dict, u: Unit, out: Outcome, bar: Any) -> None:
    """Count one result that came back from a worker."""
    if res.get("cached"):
        out.cached.append(u.key)
    else:
        out.add(u.key, res["seconds"], res["error"])
        if res["error"] is not None:
            log.warning("unit %s failed: %s", u.label, res["error"])
    bar.set_postfix_str(u.label)
    bar.update(1)


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """Shut the pool down now: queued units are cancelled, running workers terminated."""
    procs = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=5)


def default_workers() -> int:
    """One single-threaded worker per core (at most 8): small units run best side by side."""
    return max(1, min(os.cpu_count() or 1, 8))


def make_executor(
    name: str,
    address: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
    gpus: float | None = None,
) -> Any:
    """``local`` (``workers`` processes, default one per core up to 8) or ``ray`` (optional extra).

    For ``ray``, ``workers`` is the number of CPUs of the local Ray instance started when no
    ``address`` is given (default: all cores); with an address the cluster decides.
    ``threads`` sets every unit's torch threads (and Ray CPUs); default: the unit's ``num_cpus``.
    ``gpus`` (Ray only) sets the GPUs Ray reserves for every unit (a fraction packs several on one).
    """
    if name == "local":
        if address is not None or gpus is not None:
            raise NtkLabError(
                "--address and --gpus are for --executor ray; the local executor takes --workers "
                "and uses config key device."
            )
        return LocalExecutor(workers or default_workers(), threads)
    if name == "ray":
        from ntklab.run.ray_executor import RayExecutor

        return RayExecutor(address, num_cpus=workers, threads=threads, gpus=gpus)
    raise NtkLabError(f"--executor must be 'local' or 'ray'; got {name!r}.")
