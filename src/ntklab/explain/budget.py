"""The explain budget: its clock, the calibration of the cost model on measured units, and the
guard that the run scheduler asks before it starts each unit (:class:`BudgetGuard`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ntklab.config.base import AnyConfig
from ntklab.explain.costs import CostModel, list_schedule
from ntklab.run.schedule import Budget
from ntklab.run.units import Unit

CALIBRATION_EVIDENCE = 0.1  # recalibrate once this fraction of the planned work was measured
MIN_FACTOR = 0.25  # the calibration may lower the estimates 4-fold at most (the plan then grows)
#: Share of the planned steps an early-stopped training run is planned to take until runs of
#: this explain were measured (patience 0.3 stops it after at least 30 %; measured 31-36 % on
#: an MLP on MNIST-1D and a ResNet on CIFAR-10). Only plans use it; whether a unit may start
#: before the end of the budget is judged at its full length.
STOP_PRIOR = 0.4


@dataclass
class Clock:
    """The budget: seconds since ``start`` (``time.perf_counter``) against ``budget_s``."""

    start: float
    budget_s: float

    def elapsed(self) -> float:
        """Seconds since the start."""
        return time.perf_counter() - self.start

    def left(self) -> float:
        """Seconds of budget left (negative when over)."""
        return self.budget_s - self.elapsed()


@dataclass
class Calibration:
    """Measured vs estimated seconds of the work done so far; ``factor`` scales later estimates.

    ``min_seconds``: how much measured work the factor needs (the first units of a process
    also pay one-off costs, imports and warm-up, so a little work says little). Training
    units are compared with their estimate at the steps they took, and their planned and
    taken steps give ``stop_fraction``, how much of the plan early stopping leaves.
    """

    estimated: float = 0.0
    actual: float = 0.0
    min_seconds: float = 3.0
    planned_steps: int = 0
    taken_steps: int = 0
    trainings: int = 0

    def add(self, estimated: float, actual: float) -> None:
        """Record one piece of work: its uncalibrated estimate and its measured seconds."""
        self.estimated += estimated
        self.actual += actual

    def add_training(self, planned: int, taken: int) -> None:
        """Record one early-stopped training run: steps planned and taken."""
        self.planned_steps += max(int(planned), 0)
        self.taken_steps += max(int(taken), 0)
        self.trainings += 1

    @property
    def factor(self) -> float:
        """actual / estimated once ``min_seconds`` of work were measured, in [MIN_FACTOR, 10]."""
        if self.actual < self.min_seconds or self.estimated <= 0:
            return 1.0
        return max(MIN_FACTOR, min(self.actual / self.estimated, 10.0))

    @property
    def stop_fraction(self) -> float:
        """Steps taken / planned by the early-stopped training runs (``STOP_PRIOR`` until 2
        were measured)."""
        if self.trainings < 2 or self.planned_steps <= 0:
            return STOP_PRIOR
        return max(0.05, min(1.0, self.taken_steps / self.planned_steps))


class BudgetGuard(Budget):
    """Admits the units of one experiment under the explain budget (the scheduler's hooks).

    The run scheduler (:class:`~ntklab.run.local.LocalExecutor`, in process or on ``workers``
    worker processes) starts units in plan order once the units they read are stored, and asks
    :meth:`skip` first. Time is checked per repetition (the units with one ``seed_index``),
    because a repetition missing some n would cost the exponent fits those n for every
    repetition:

    * the first repetition is always admitted; a later one only if all its units, scheduled on
      the free workers with the calibrated estimates, end before ``deadline`` (the
      experiment's share of the budget); otherwise it is skipped whole;
    * any unit whose calibrated estimate at full length (training not stopped early) would end
      after ``hard_deadline`` (the end of the budget, less the analysis and report) is
      skipped, with every unit not started yet; for the first repetition the limit is
      ``first_deadline`` (the end of the budget less the report: an analysis of nothing is
      worth nothing, and its estimate is the noisiest).

    Skipped units stay missing in the store (not failed), so running explain again computes
    them (:attr:`skipped`: their labels). Updates the shared progress ``bar`` and the
    ``calibration`` (uncalibrated estimate vs measured wall seconds of every unit run, read
    from ``store`` for the steps a training run took); :attr:`unit_seconds` sums those seconds.
    """

    def __init__(
        self,
        cfg: AnyConfig,
        costs: CostModel,
        deadline: float,
        calibration: Calibration,
        bar: Any,
        store: Any,
        workers: int = 1,
        hard_deadline: float | None = None,
        first_deadline: float | None = None,
    ) -> None:
        self.cfg, self.costs, self.deadline = cfg, costs.scaled(1.0), deadline
        self.full = CostModel(costs.p, costs.workers, 1.0, costs.budget_bytes)  # no early stopping
        self.hard_deadline = deadline if hard_deadline is None else max(hard_deadline, deadline)
        self.first_deadline = self.hard_deadline if first_deadline is None else first_deadline
        self.calibration, self.bar, self.store = calibration, bar, store
        self.workers = max(1, workers)
        self.skipped: list[str] = []
        self.unit_seconds = 0.0
        self.seed_of: dict[str, Any] = {}
        self.first: Any = None
        self.admitted: set[Any] = {None}

    @property
    def slow(self) -> float:
        """The contention of units side by side on the workers (1 in process)."""
        return self.costs.p.contention if self.workers > 1 else 1.0

    def begin(self, todo: Sequence[Unit], settled: int) -> None:
        """Count the settled units; the repetition of the first of ``todo`` is admitted."""
        self.bar.update(settled)
        self.seed_of = {u.key: u.args.get("seed_index") for u in todo}
        self.first = min((v for v in self.seed_of.values() if isinstance(v, int)), default=None)
        self.admitted = {self.first, None}

    def skip(self, unit: Unit, waiting: Sequence[Unit], busy: int) -> list[Unit]:
        """Its whole repetition when that does not fit ``deadline``; everything waiting when
        ``unit`` at full length would end past the hard limit; else nothing."""
        seed = self.seed_of.get(unit.key)
        if seed not in self.admitted:
            group = [v for v in waiting if self.seed_of.get(v.key) == seed]
            if not self._group_fits(group, busy):
                return group
            self.admitted.add(seed)
        limit = self.first_deadline if seed == self.first else self.hard_deadline
        longest = self.full.unit(self.cfg, unit)  # early stopping may not come
        if time.perf_counter() + longest * self.slow * self.calibration.factor > limit:
            return list(waiting)
        return []

    def left(self, units: Sequence[Unit]) -> None:
        """Record the units left unrun."""
        self.skipped += [v.label for v in units]
        self.bar.update(len(units))

    def ended(self, unit: Unit, seconds: float, error: str | None, cached: bool) -> None:
        """Calibrate on a unit this process ran (``seconds``: its wall time) and count it."""
        if not cached:
            if error is None:
                self._measured(unit, seconds)
            self.unit_seconds += seconds
            self.bar.set_postfix_str(f"{self.cfg.experiment}: {unit.label}")
        self.bar.update(1)

    def _group_fits(self, group: list[Unit], busy: int) -> bool:
        """Whether the units of one repetition, scheduled on the free workers, end before the deadline."""
        items = [(u.key, self.costs.unit(self.cfg, u), tuple(getattr(u, "after", ()))) for u in group]
        wall = list_schedule(items, max(1, self.workers - busy)) * self.slow * self.calibration.factor
        return time.perf_counter() + wall <= self.deadline

    def _measured(self, u: Unit, secs: float) -> None:
        """Calibrate on a finished unit: a training run is compared with its estimate at the
        steps it took (early stopping is not a faster machine), and side by side with other
        units with its estimate slowed by the contention (as the experiment estimates are)."""
        est = self.costs.unit(self.cfg, u)  # uncalibrated: the calibration compares with it
        if u.fn.rpartition(":")[2] == "train_network":
            try:
                res = self.store.load(u.key)
                taken, planned = int(res["steps"]), int(res.get("planned_steps") or 0)
            except Exception:  # noqa: BLE001 - an older result or a store race: plain estimate
                taken = planned = 0
            if planned > 0:
                est = self.costs.unit(self.cfg, u, taken=taken)
                if self.cfg.train.early_stopping:
                    self.calibration.add_training(planned, taken)
        self.calibration.add(est * self.slow, secs)
