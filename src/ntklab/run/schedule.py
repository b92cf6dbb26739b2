"""Scheduling: which units still run, in which order, and what running them gave.

Every executor takes the units a store lacks (:func:`pending`) and hands them out in plan
order with a :class:`Schedule`: a unit starts once the units it reads (``Unit.after``) are
stored; if one of them failed, it is recorded as failed too; a unit that another process is
computing (it holds the unit's lease) is held back while others can start, then read from the
store. A :class:`Budget` may leave units unrun (missing in the store, so a later run computes
them) and hears of every finished unit.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ntklab.run.store import Store
from ntklab.run.units import Unit

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


class UnitExecutor:
    """What every executor shares: :meth:`run` finds the units the store lacks (with the
    executor's thread and GPU requests) and hands them to :meth:`run_pending`."""

    threads: int | None = None
    gpus: float | None = None

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
        todo, out = pending(with_threads(units, self.threads, self.gpus), store, retry_failed)
        return self.run_pending(todo, out, ctx, store, progress)

    def run_pending(
        self, todo: list[Unit], out: Outcome, ctx: Any, store: Store, progress: bool | None
    ) -> Outcome:
        """Run ``todo`` (the cached and failed units are in ``out`` already); returns ``out``."""
        raise NotImplementedError


class Budget:
    """Hooks of a run under a time budget; this base class admits every unit and ignores the rest.

    The executor calls :meth:`begin` once with the units still to run, :meth:`skip` before it
    starts each unit, :meth:`ended` for every unit of ``todo`` that finished (computed, failed,
    or stored by another process meanwhile) and :meth:`left` for those left unrun. Skipped
    units stay missing in the store (not failed), and so do the units that read them: a later
    run computes them.
    """

    def begin(self, todo: Sequence[Unit], settled: int) -> None:
        """The run starts: ``todo`` will run, ``settled`` units were cached or failed before."""

    def skip(self, unit: Unit, waiting: Sequence[Unit], busy: int) -> list[Unit]:
        """Units of ``waiting`` (``unit`` among them) to leave unrun instead of starting ``unit``
        now, with ``busy`` units running; empty: start it."""
        return []

    def ended(self, unit: Unit, seconds: float, error: str | None, cached: bool) -> None:
        """``unit`` finished after ``seconds`` of wall time (``cached``: another process stored it)."""

    def left(self, units: Sequence[Unit]) -> None:
        """``units`` were left unrun: those :meth:`skip` named, and the units that read them."""


class Schedule:
    """Hands out units whose ``after`` units are stored, in plan order.

    A unit whose dependency failed (in this run or before) is failed without running. With
    other runs on the same store, a unit another process is computing (it holds the unit's
    lease) is held back while other units can start, and counted as cached once that process
    stores it (or as failed if it records a failure); see :meth:`wait_for_others`. The
    ``budget`` may leave units unrun (:attr:`skipped`, with the units that read them).
    """

    def __init__(
        self, todo: Sequence[Unit], store: Store, out: Outcome, budget: Budget | None = None
    ) -> None:
        self.waiting = list(todo)
        self.store, self.out = store, out
        self.budget = budget or Budget()
        self.skipped: list[Unit] = []
        self.labels = {u.key: u.label for u in todo}
        self.running: set[str] = set()
        self.failures = {u.key: store.failure(u.key) for u in todo}  # as they were before this run
        self.watch = store.lease_watch()
        self.elsewhere = False  # some waiting unit is being computed by another process

    def _blocked_by(self, u: Unit) -> tuple[str | None, bool]:
        """(failed dependency key or None, whether some dependency is still to come)."""
        later = False
        skipped = {v.key for v in self.skipped}
        for k in u.after:
            if k in self.out.failed or k in skipped:
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
                if bad is not None and any(v.key == bad for v in self.skipped):
                    self._skip([u])  # it reads a unit left unrun: left unrun too, not failed
                    changed = True
                elif bad is not None:
                    self.waiting.remove(u)
                    msg = f"DependencyError: needs unit {self.labels.get(bad, bad)!r}, which failed or is missing"
                    self.store.record_failure(u.key, {"unit": u.label, "error": msg})
                    self.out.add(u.key, 0.0, msg)
                    self.budget.ended(u, 0.0, msg, cached=False)
                    changed = True
                elif later:
                    continue
                elif (where := self._elsewhere(u)) == "done":
                    self.waiting.remove(u)
                    self.budget.ended(u, 0.0, self.out.failed.get(u.key), cached=u.key in self.out.cached)
                    changed = True
                elif where == "busy":
                    self.elsewhere = True
                elif late := self.budget.skip(u, self.waiting, len(self.running)):
                    self._skip(late)
                    changed = True
                    break  # the waiting list changed under this loop
                else:
                    self.waiting.remove(u)
                    self.running.add(u.key)
                    out.append(u)
        return out

    def _skip(self, units: Sequence[Unit]) -> None:
        """Leave ``units`` unrun (they stay missing in the store)."""
        for v in units:
            self.waiting.remove(v)
            self.skipped.append(v)
        self.budget.left(units)

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
