"""The cost model: seconds of every unit and experiment of a plan, from the probe's timings."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ntklab.config.base import AnyConfig
from ntklab.explain.probe import REGRESS_PROBE_N, Probe
from ntklab.run.units import Unit

EXPERIMENTS = ("data-scaling", "pretrained-kernel", "kernel-evolution")
FIGURES_PER_EXPERIMENT = {"data-scaling": 1, "pretrained-kernel": 2, "kernel-evolution": 4}


def block_pairs(a: dict, n_eval: int) -> tuple[int, int, float]:
    """(rows, cols, pairs) of a kernel block unit's arguments (:func:`~ntklab.experiments.blocks.block_args`):
    train[rows] x train[cols] (the triangle on the diagonal), or eval x train[cols]."""
    c = a["cols"][1] - a["cols"][0]
    r = n_eval if a["part"] == "cross" else a["rows"][1] - a["rows"][0]
    pairs = c * (c + 1) / 2 if a["part"] == "train" and a["rows"] == a["cols"] else r * c
    return r, c, pairs


class CostModel:
    """Seconds of every unit and of every experiment, from a :class:`Probe`.

    Unit estimates (one worker, the units' thread count), times the calibration ``factor``:

    * training: ``init + steps · step_s · max(min(B, n) / B, 1/4) + fwd_s · (V · evals + n + T)``
      (V validation points evaluated ``train.evals + 1`` times when there is a validation split,
      then the n training and T test points); with early stopping the steps and evaluations are
      scaled by ``stop_fraction``, the fraction of the planned steps that early-stopped runs of
      this explain run took so far (1 until measured);
    * eNTK with n training points (symmetric block) and E evaluation points (cross block), with
      the panels of :mod:`ntklab.kernels.empirical.budget` (its ``RESIDENT_SHARE`` and ``FEATURES_SHARE``
      of the memory budget, at ``feature_bytes`` per sample): features computed once when they
      fit, else those of the columns after each panel again for every panel (symmetric), or
      those of the n training columns again for every panel of E rows (cross). Seconds:
      ``overhead + feature_s · samples + pair_s · entries``;
    * infinite NTK/NNGP: ``infinite_pair_s`` per entry;
    * kernel regression: ``regress_s · max(1/8, (n / 512)³)`` per kernel and n.

    An experiment's wall time (:meth:`experiment`) is the list schedule of its units in plan
    order on ``workers`` workers (a unit starts once the units it reads are done), slowed by
    the probe's ``contention`` when several workers share the machine, plus data loading (driver and
    workers) and the analysis in the driver (regressions, fits, figures).
    """

    def __init__(
        self,
        probe: Probe,
        workers: int = 1,
        factor: float = 1.0,
        budget_bytes: int = 2**31,
        stop_fraction: float = 1.0,
    ) -> None:
        self.p = probe
        self.workers = max(1, workers)
        self.factor = factor
        self.budget_bytes = budget_bytes
        self.stop_fraction = stop_fraction

    def scaled(self, factor: float) -> CostModel:
        """The same model with calibration ``factor``."""
        return CostModel(self.p, self.workers, factor, self.budget_bytes, self.stop_fraction)

    @property
    def slow(self) -> float:
        """How much slower a unit runs beside the others (the probe's contention, with workers)."""
        return self.p.contention if self.workers > 1 else 1.0

    # ---- pieces (seconds on one worker)
    def train(
        self, n: int, steps: float, n_test: int, evals: int = 1, n_val: int = 0, val_evals: float = 0
    ) -> float:
        """Seconds of training n samples for ``steps`` steps, with ``evals`` evaluations of the
        n training and ``n_test`` test points and ``val_evals`` of ``n_val`` validation points."""
        p = self.p
        frac = max(min(p.batch, n) / max(p.batch, 1), 0.25)
        fwd = p.fwd_s * ((n + n_test) * evals + n_val * val_evals)
        return self.factor * (p.init_s + steps * p.step_s * frac + fwd)

    def feature_samples(self, n: int, n_eval: int) -> int:
        """Samples whose eNTK features the engine computes for the blocks K(n, n) and K(E, n)."""
        from ntklab.kernels.empirical.budget import FEATURES_SHARE, RESIDENT_SHARE  # imports torch

        fb = max(self.p.feature_bytes, 1)
        resident = int(RESIDENT_SHARE * self.budget_bytes) // fb
        m = max(2, int(FEATURES_SHARE * self.budget_bytes) // fb)
        if n <= resident:
            samples = n
        else:  # panels of R = 2M/3 rows (the engine's), each recomputes the columns after it
            r = max(1, min(n, 2 * m // 3))
            samples = n + sum(max(0, n - (i + 1) * r) for i in range(math.ceil(n / r)))
        if n_eval:
            if n_eval + n <= m:
                samples += n_eval + n
            else:  # panels of R evaluation rows; each recomputes the n training columns
                r = max(1, min(n_eval, 2 * m // 3))
                samples += n_eval + math.ceil(n_eval / r) * n
        return samples

    def entk(self, n: int, n_eval: int) -> float:
        """Seconds of the eNTK blocks on n training and ``n_eval`` evaluation points."""
        p = self.p
        samples = self.feature_samples(n, n_eval)
        entries = n * (n + 1) / 2 + n_eval * n
        calls = 2 if n_eval else 1
        return self.factor * (
            p.init_s + calls * p.entk_overhead_s + samples * p.feature_s + entries * p.pair_s
        )

    def infinite(self, n: int, n_eval: int) -> float:
        """Seconds of the infinite NTK and NNGP blocks."""
        return self.factor * self.p.infinite_pair_s * (n * (n + 1) / 2 + n_eval * n)

    def regress(self, n: int) -> float:
        """Seconds of one kernel regression (the ridge grid) at n."""
        return self.factor * self.p.regress_s * max(0.125, (n / REGRESS_PROBE_N) ** 3)

    def network(self, cfg: AnyConfig, n: int, steps: int | None = None, taken: int | None = None) -> float:
        """Seconds of one network of ``cfg`` trained on n points by its rule (or ``steps``) and
        evaluated: ``taken`` steps when known, else the planned ones, early-stopped by
        ``stop_fraction``."""
        planned = int(steps if steps is not None else cfg.train.total_steps(n))
        tc, t = cfg.train, _n_test(cfg, self.p)
        frac = 1.0
        if taken is not None:
            frac = min(1.0, taken / max(planned, 1))
        elif tc.early_stopping and cfg.data.n_val > 0:
            frac = self.stop_fraction
        val_evals = (tc.evals + 1) * frac if cfg.data.n_val > 0 else 0.0
        return self.train(n, planned * frac, t, n_val=cfg.data.n_val, val_evals=val_evals)

    # ---- units
    def unit(self, cfg: AnyConfig, u: Unit, taken: int | None = None) -> float:
        """Estimated seconds of unit ``u`` of experiment ``cfg`` on one worker (``taken``: the
        training steps it took, once known)."""
        a, fn = u.args, u.fn.rpartition(":")[2]
        t = _n_test(cfg, self.p)
        e = cfg.data.n_val + t

        def steps_of(n: int) -> int:
            return int(a.get("steps") or cfg.train.total_steps(n))

        if fn == "train_network":
            return self.network(cfg, a["n"], a.get("steps"), taken)
        if fn == "entk_at_init":
            return self.entk(a["n"], e)
        if fn == "infinite_block":
            return self.factor * (self.p.init_s + self.p.infinite_pair_s * block_pairs(a, e)[2])
        if fn == "entk_block":  # the features of both sides, then their products
            r, c, pairs = block_pairs(a, e)
            samples = self.feature_samples(c, 0 if a["part"] == "train" and a["rows"] == a["cols"] else r)
            p = self.p
            return self.factor * (p.init_s + p.entk_overhead_s + samples * p.feature_s + pairs * p.pair_s)
        if fn == "entk_outputs":  # f0 beside the blocks: one forward pass
            return self.factor * self.p.init_s
        if fn == "train_with_checkpoints":
            return self.train(a["n"], steps_of(a["n"]), t, evals=len(a.get("checkpoint_steps", [])) + 1)
        if fn == "kernels_at_checkpoint":
            return self.entk(a["n_train"], e) + self.entk(a.get("probe_test", 0), 0)
        if fn == "after_kernel":  # pre-train on n0, then the eNTK on n training points
            pre = self.network(cfg, a["n0"], a.get("steps"), taken)
            return pre + self.entk(a["n"], e) - self.factor * self.p.init_s
        # units of experiments written later: judged by their kind and arguments (conservative)
        n = int(a.get("n") or a.get("n_train") or a.get("n0") or cfg.data.n_max)
        if u.kind == "train":
            return self.train(n, steps_of(n), t)
        if u.kind == "infinite":
            return self.infinite(n, e)
        if u.kind in ("entk", "kernel"):
            return self.entk(n, e)
        return self.train(n, steps_of(n), t) + self.entk(max(n, cfg.data.n_max), e)

    # ---- analysis (regressions, fits, figures) of one experiment, in the driver
    def analysis(self, cfg: AnyConfig) -> float:
        """Seconds of ``cfg``'s analysis in the driver: regressions, fits, figures."""
        p, grid = self.p, cfg.data.n_grid()
        figs = FIGURES_PER_EXPERIMENT.get(cfg.experiment, 2) * p.figure_s
        if cfg.experiment == "kernel-evolution":
            ev = cfg.evolution
            ckpts = ev.n_checkpoints + 6  # log-spaced steps round to fewer; milestones add some
            probe_n = ev.probe_train + ev.probe_test
            eig = self.regress(probe_n) / 4
            kt = sum(self.regress(n) for n in grid if n < ev.regress_n) + self.regress(ev.regress_n)
            return self.factor * figs + cfg.seeds * ckpts * (eig + kt)
        kernels = cfg.seeds * ("entk" in cfg.methods) + sum(m in ("ntk", "nngp") for m in cfg.methods)
        if cfg.experiment == "pretrained-kernel":
            kernels += cfg.seeds * len(cfg.pretrained.n0) + (
                cfg.seeds * len(grid) if cfg.pretrained.grow else 0
            )
        fits = len(cfg.methods) + 2
        return self.factor * (figs + fits * p.fit_s) + kernels * sum(self.regress(n) for n in grid)

    def experiment(self, cfg: AnyConfig, units: Sequence[Unit], skip: Callable[[str], bool]) -> float:
        """Wall seconds of experiment ``cfg``: its units not ``skip``-ped (cached or planned
        earlier) scheduled on the workers, data loading and the analysis."""
        items = []
        seen: set[str] = set()
        for u in units:
            if u.key in seen or skip(u.key):
                continue
            seen.add(u.key)
            items.append((u.key, self.unit(cfg, u), tuple(getattr(u, "after", ()))))
        wall = list_schedule(items, self.workers) * self.slow
        loads = self.p.load_s * (2 if items and self.workers > 1 else 1)
        return self.factor * loads + wall + self.analysis(cfg)


def list_schedule(items: Sequence[tuple[str, float, tuple[str, ...]]], workers: int) -> float:
    """Makespan of (key, seconds, keys it waits for) run in order on ``workers`` workers: each
    starts on the first free worker once the units it waits for (among ``items``) have ended."""
    free = [0.0] * max(1, workers)
    end: dict[str, float] = {}
    for key, secs, after in items:
        i = min(range(len(free)), key=free.__getitem__)
        start = max([free[i], *(end[k] for k in after if k in end)])
        free[i] = end[key] = start + secs
    return max(free)


def _n_test(cfg: AnyConfig, probe: Probe) -> int:
    return probe.n_test_max if cfg.data.n_test is None else min(cfg.data.n_test, probe.n_test_max)


def available_experiments() -> list[str]:
    """The experiments of :data:`EXPERIMENTS` in the experiment registry."""
    from ntklab.experiments import REGISTRY

    return [e for e in EXPERIMENTS if e in REGISTRY]


def plan_units(name: str, cfg: AnyConfig) -> list[Unit]:
    """The units of experiment ``name`` with config ``cfg``."""
    from ntklab import experiments

    return experiments.get(name).plan(cfg)


class Estimator:
    """Estimated wall seconds of experiments; units already stored, or planned by an earlier
    experiment of the same plan, cost nothing (their keys are shared)."""

    def __init__(self, costs: CostModel, store: Any) -> None:
        self.costs, self.store = costs, store
        self._stored: dict[str, bool] = {}

    def forget(self) -> None:
        """Forget what the store held (units stored since are free from now on)."""
        self._stored.clear()

    def stored(self, key: str) -> bool:
        """Whether the store holds unit ``key`` (memoized)."""
        if key not in self._stored:
            self._stored[key] = bool(self.store.has(key))
        return self._stored[key]

    def __call__(self, configs: Mapping[str, AnyConfig], earlier: set[str] | None = None) -> dict[str, float]:
        """Estimated wall seconds of each experiment of ``configs``, run in order after ``earlier`` keys."""
        seen = set(earlier or ())
        out = {}
        for name, cfg in configs.items():
            units = plan_units(name, cfg)
            out[name] = self.costs.experiment(cfg, units, lambda k, seen=seen: k in seen or self.stored(k))
            seen |= {u.key for u in units}
        return out
