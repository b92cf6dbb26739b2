"""The ``local`` executor: units in this process, or side by side in spawned worker processes.

Each worker builds its own :class:`~ntklab.run.context.RunContext` from the config
(:func:`~ntklab.run.execute.run_in_worker`). A worker that dies (killed, out of memory) fails
the units in flight (recorded in the store; the sweep goes on) and the pool is started again.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from ntklab.errors import NtkLabError
from ntklab.progress import progress_bar
from ntklab.run.execute import claim_and_run, config_payload, exit_with_parent, run_in_worker
from ntklab.run.schedule import Budget, Outcome, Schedule, UnitExecutor, count_result
from ntklab.run.store import Store
from ntklab.run.units import Unit

WORKER_DIED = "WorkerDied: a worker process died while running this unit or one beside it"


def default_workers(cap: int | None = 8) -> int:
    """Worker processes for the units: one per CPU this process may use, at most ``cap``
    (None: no cap). Units run single-threaded by default, so small ones run best side by side."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus if cap is None else min(cpus, cap))


def stop_pool(pool: ProcessPoolExecutor | None) -> None:
    """Shut the pool down now: queued units are cancelled, running workers terminated."""
    if pool is None:
        return
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=5)


class LocalExecutor(UnitExecutor):
    """Runs units in this process (``workers=1``) or in ``workers`` spawned processes.

    ``threads`` overrides every unit's ``num_cpus`` (its torch threads); default: as declared.
    ``budget`` (:class:`~ntklab.run.schedule.Budget`) may leave units unrun and hears of every
    finished unit with its wall seconds; a caller running several experiments under one budget
    sets it before each. ``keep_pool``: the worker processes stay up between runs until
    :meth:`close` (:meth:`open` starts them ahead of the first run).
    """

    name = "local"

    def __init__(
        self,
        workers: int = 1,
        threads: int | None = None,
        budget: Budget | None = None,
        keep_pool: bool = False,
    ) -> None:
        if workers < 1:
            raise NtkLabError(f"--workers must be at least 1; got {workers}.")
        self.workers = workers
        self.threads = threads
        self.budget = budget
        self.keep_pool = keep_pool
        self._kept: ProcessPoolExecutor | None = None

    def open(self) -> None:
        """Start the worker processes now, each importing the units' module (``keep_pool`` only)."""
        if self.keep_pool and self.workers > 1 and self._kept is None:
            self._kept = self._pool()
            for _ in range(self.workers):
                self._kept.submit(importlib.import_module, "ntklab.experiments.units")

    def run_pending(
        self, todo: list[Unit], out: Outcome, ctx: Any, store: Store, progress: bool | None
    ) -> Outcome:
        """Run ``todo`` in process or on the worker pool, asking the budget before each unit."""
        budget = self.budget or Budget()
        budget.begin(todo, len(out.cached) + len(out.failed))
        if not todo:
            return out
        sched = Schedule(todo, store, out, budget)
        with progress_bar(total=len(todo), desc="units", enabled=progress) as bar:
            if self.workers == 1 or len(todo) == 1:
                self._in_process(sched, ctx, store, bar)
            else:
                self._in_pool(sched, ctx, store, bar)
            bar.update(len(todo) - bar.n)
        return out

    def _in_process(self, sched: Schedule, ctx: Any, store: Store, bar: Any) -> None:
        while sched:
            batch = sched.ready(limit=1)
            if not batch:
                if sched.wait_for_others():
                    continue
                break
            for u in batch:
                bar.set_postfix_str(u.label)
                t0 = time.perf_counter()
                self._count(claim_and_run(u, ctx, store), u, sched, bar, time.perf_counter() - t0)

    def _in_pool(self, sched: Schedule, ctx: Any, store: Store, bar: Any) -> None:
        cfg_json, digest = config_payload(ctx)
        pool = self._kept or self._pool()
        futures: dict[Future, tuple[Unit, float]] = {}

        def submit(u: Unit, t0: float) -> None:
            futures[pool.submit(run_in_worker, cfg_json, digest, str(store.root), None, u)] = (u, t0)

        try:
            while sched:
                for u in sched.ready(limit=self.workers - len(futures)):
                    submit(u, time.perf_counter())
                if not futures:
                    if sched.wait_for_others():
                        continue
                    break
                # while units wait for other processes, look again now and then
                timeout = store.lease_times.poll_s if sched.elsewhere else None
                done, _ = wait(futures, timeout=timeout, return_when=FIRST_COMPLETED)
                broken = False
                for f in done:
                    u, t0 = futures.pop(f)
                    try:
                        res = f.result()
                    except BrokenProcessPool:  # a worker died (killed, out of memory): blame all in flight
                        broken = True
                        store.record_failure(u.key, {"unit": u.label, "error": WORKER_DIED})
                        res = {"key": u.key, "seconds": 0.0, "error": WORKER_DIED}
                    if res.get("user_error") is not None:
                        raise res["user_error"]
                    self._count(res, u, sched, bar, time.perf_counter() - t0)
                if broken:
                    stop_pool(pool)
                    pool = self._pool()
                    self._kept = pool if self.keep_pool else None
                    for f, (u, t0) in list(futures.items()):  # futures of the dead pool: run them again
                        del futures[f]
                        submit(u, t0)
        except BaseException:  # interrupted or a user error: stop the workers now
            stop_pool(pool)
            self._kept = None
            raise
        if self.keep_pool:
            self._kept = pool
        else:
            pool.shutdown(wait=True)

    @staticmethod
    def _count(res: dict, u: Unit, sched: Schedule, bar: Any, wall_s: float) -> None:
        """Count one finished unit (``wall_s``: from its start in this process to its result)."""
        count_result(res, u, sched.out, bar)
        sched.done(u.key)
        sched.budget.ended(u, wall_s, res.get("error"), bool(res.get("cached")))

    def _pool(self) -> ProcessPoolExecutor:
        """A pool of ``workers`` spawned processes that exit when this process dies."""
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=exit_with_parent,
            initargs=(os.getpid(),),
        )

    def close(self) -> None:
        """Shut down the worker processes kept between runs (waiting for them)."""
        if self._kept is not None:
            self._kept.shutdown(wait=True)
            self._kept = None
