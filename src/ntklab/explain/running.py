"""Running a plan: the experiments one after the other under the budget, re-planned between
them, on one pool of worker processes with one progress bar; then the report."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ntklab.config.base import AnyConfig
from ntklab.config.loading import validate
from ntklab.errors import NtkLabError, RunDirError
from ntklab.explain.budget import CALIBRATION_EVIDENCE, STOP_PRIOR, BudgetGuard, Calibration, Clock
from ntklab.explain.costs import EXPERIMENTS, CostModel, Estimator, available_experiments, plan_units
from ntklab.explain.inputs import MISSING, Inputs, get_dotted
from ntklab.explain.network_check import best_steps, network_check
from ntklab.explain.plan import Plan, choose_plan, describe_config, replan
from ntklab.explain.probe import Probe
from ntklab.explain.state import cfg_json, new_state, resumed_plan, save_state

if TYPE_CHECKING:
    from ntklab.run.local import LocalExecutor

SAFETY = 0.85  # plan at most this fraction of the time left (the budget guard keeps the rest)
LATE_SAFETY = 0.9  # when re-planning after an experiment, with the calibrated cost model
GROW_BELOW = 0.7  # re-plan larger when the rest is estimated below this share of the time left
MIN_SPEEDUP = 1.25  # below this parallel speed-up (probe), units run in process
WORKER_START_S = 8.0  # spawning the worker processes and importing torch there
REPORT_RESERVE_S = 3.0  # writing report.html / report.md
TOP_UP_MAX_SEEDS = 8  # time left over buys data scaling repetitions up to this many
TOP_UP_ROUNDS = 3


def run_plan(
    inputs: Inputs,
    out_dir: Path,
    state: dict[str, Any] | None,
    probe: Probe,
    base_cfg: AnyConfig,
    clock: Clock,
    n_workers: int,
    workers: int | None,
    overrides: Sequence[str],
    config: str | Path | None,
    budget_minutes: float,
    progress: bool | None,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """:func:`explain` after the probe: plan, run the experiments, write the report."""
    from ntklab.progress import progress_bar
    from ntklab.report.verdicts import verdicts
    from ntklab.report.write import write_report
    from ntklab.run.local import LocalExecutor
    from ntklab.run.runner import default_store

    if workers is None and n_workers > 1 and n_workers / probe.contention < MIN_SPEEDUP:
        n_workers = 1  # the cores are busy: worker processes would only add their start-up
    out_dir.mkdir(parents=True, exist_ok=True)
    store = default_store()
    costs = CostModel(
        probe, n_workers, budget_bytes=base_cfg.kernel.memory_budget_mb * 2**20, stop_fraction=STOP_PRIOR
    )
    estimator = Estimator(costs, store)
    reserve = REPORT_RESERVE_S + (WORKER_START_S if n_workers > 1 else 0.0)
    if state is not None and state.get("plan_configs"):
        try:
            plan = resumed_plan(state, estimator)
        except (KeyError, TypeError, AttributeError, ValueError):  # not the state ntklab wrote
            raise RunDirError(
                f"{out_dir / 'explain.json'} is damaged; remove it or choose another --out."
            ) from None
        say(f"resuming the explain run in {out_dir} (finished units are reused)")
    else:
        plan = choose_plan(inputs, probe, estimator, SAFETY * (clock.left() - reserve))
        state = new_state(inputs, plan, clock.budget_s, budget_minutes, overrides, config)
    missing = [e for e in EXPERIMENTS if e not in available_experiments()]
    state.update(
        probe=asdict(probe),
        workers=n_workers,
        plan=plan.describe(),
        plan_fits=plan.fits,
        experiments=[{"name": n, "dir": n, "status": "pending"} for n in EXPERIMENTS],
        notes=[],
    )
    _echo_plan(say, probe, plan, clock.budget_s, n_workers)
    save_state(out_dir, state)

    calibration = Calibration(min_seconds=max(3.0, CALIBRATION_EVIDENCE * plan.total))
    summaries: dict[str, dict[str, Any]] = {}
    executor = LocalExecutor(n_workers, keep_pool=True)
    executor.name = "explain"  # summary.json names what ran the units: explain's budgeted runs
    executor.open()
    try:
        with progress_bar(
            total=_count_units(plan.configs, EXPERIMENTS), desc="explain", enabled=progress
        ) as bar:
            session = Session(
                state,
                inputs,
                estimator,
                calibration,
                clock,
                bar,
                executor,
                out_dir,
                store,
                summaries,
                missing,
                say,
            )
            for name in EXPERIMENTS:
                plan = _run_one(name, plan, session)
            plan = _top_up(plan, session)
    finally:
        executor.close()
    ds_cfg = plan.configs.get("data-scaling")
    if ds_cfg is not None and "data-scaling" in summaries:
        kept_at = best_steps(out_dir / "data-scaling" / "results.csv", ds_cfg.data.n_max)
        state["training"] = network_check(ds_cfg, summaries["data-scaling"], plan.head.short, kept_at)
        state["notes"] += state["training"]["notes"]
        for line in state["training"]["notes"]:
            say(line)
    state["calibration_factor"] = round(calibration.factor, 3)
    state["stop_fraction"] = round(calibration.stop_fraction, 3)
    state["seconds"] = round(clock.elapsed() + 1.0, 1)  # the report takes about a second
    save_state(out_dir, state)
    html_path, md_path = write_report(out_dir)
    for name, summary in summaries.items():
        for v in verdicts(summary):
            say(f"[{name}] {v.text}")
    say(f"report: {html_path} ({clock.elapsed():.0f} s of a {clock.budget_s:.0f} s budget)")
    return {
        **state,
        "summaries": summaries,
        "report_html": str(html_path),
        "report_md": str(md_path),
        "out": str(out_dir),
    }


@dataclass
class Session:
    """What every experiment of one explain run shares: its state (``explain.json``), inputs,
    cost model, calibration, clock, progress bar, executor, output folder, unit store, the
    summaries so far, the experiments without a module, and where messages go."""

    state: dict[str, Any]
    inputs: Inputs
    estimator: Estimator
    calibration: Calibration
    clock: Clock
    bar: Any
    executor: LocalExecutor
    out_dir: Path
    store: Any
    summaries: dict[str, dict[str, Any]]
    missing: Sequence[str]
    say: Callable[[str], None]

    def recalibrate(self) -> CostModel:
        """The cost model, from here on with what was measured so far (calibration factor,
        early-stopping fraction) and forgetting which units the store held."""
        costs = self.estimator.costs
        costs.factor, costs.stop_fraction = self.calibration.factor, self.calibration.stop_fraction
        self.estimator.forget()  # the units of the experiments run so far are stored now
        return costs


def _run_one(name: str, plan: Plan, s: Session) -> Plan:
    """Run experiment ``name`` of ``plan`` (re-planning what is left when running late);
    returns the plan, shrunk or not. Updates ``s.state``, ``s.summaries`` and ``explain.json``."""
    from ntklab.run.runner import run_experiment

    rec = next(r for r in s.state["experiments"] if r["name"] == name)
    costs = s.recalibrate()
    left = s.clock.left() - REPORT_RESERVE_S
    resumed = (s.out_dir / name / "run.json").is_file()  # ran before: keep its config (same unit keys)
    if name != "data-scaling" and not resumed and "data-scaling" in plan.configs:
        plan = _adjust(name, plan, s.state, s.inputs, s.estimator, left, s.bar, s.say)
    if name not in plan.configs:
        note = (
            "no module in this install"
            if name in s.missing
            else f"not enough time left ({max(left, 0):.0f} s)"
        )
        rec.update(status="skipped", note=note)
        return plan
    remaining = [n for n in EXPERIMENTS[EXPERIMENTS.index(name) :] if n in plan.configs]
    est = s.estimator({n: plan.configs[n] for n in remaining}, set(_done_keys(plan, name)))
    cfg = plan.configs[name]
    s.state["plan_configs"][name] = cfg_json(cfg)
    rec.update(status="running", estimated_s=round(est.get(name, 0.0), 1))
    save_state(s.out_dir, s.state)
    # this experiment's slice of the time left: in proportion to its estimate, and at least
    # 1.25 x its estimate (the later experiments are shrunk or dropped if that leaves too little)
    share = est[name] / max(sum(est.values()), 1e-9)
    time_slice = min(max(left * share, 1.25 * est[name]), left)
    raw = costs.scaled(1.0)
    analysis_s = raw.analysis(cfg) + raw.p.load_s
    now, reserve = time.perf_counter(), analysis_s * s.calibration.factor
    deadline = now + time_slice - reserve
    hard = now + left - reserve  # the later experiments are shrunk or dropped if this runs late
    workers = s.executor.workers
    guard = BudgetGuard(cfg, costs, deadline, s.calibration, s.bar, s.store, workers, hard, now + left)
    s.executor.budget = guard
    t0 = time.perf_counter()
    try:
        summary = run_experiment(cfg, s.out_dir / name, executor=s.executor, store=s.store, progress=False)
    except NtkLabError:
        raise
    except Exception as exc:  # noqa: BLE001 - one experiment's bug must not lose the others
        msg = f"{type(exc).__name__}: {exc}"
        rec.update(status="failed", note=msg, seconds=round(time.perf_counter() - t0, 1))
        s.state["notes"].append(f"{name}: failed with {msg}")
        save_state(s.out_dir, s.state)
        return plan
    secs = time.perf_counter() - t0
    if guard.unit_seconds > 0:
        s.calibration.add(analysis_s, max(0.0, secs - guard.unit_seconds / max(workers, 1)))
    s.summaries[name] = summary
    rec.update(
        status="partial" if guard.skipped else "done",
        seconds=round(secs, 1),
        skipped_units=guard.skipped,
        failed_units=len(summary.get("failed_units", [])),
    )
    s.state["seconds"] = round(s.clock.elapsed(), 1)
    save_state(s.out_dir, s.state)
    return plan


def _top_up(plan: Plan, s: Session) -> Plan:
    """Spend the time left after every experiment on more repetitions of data scaling.

    Each repetition is a new data draw and initialization, so the exponents' CIs narrow.
    Data scaling grows to the most seeds (at most ``TOP_UP_MAX_SEEDS``) whose units and
    analysis the calibrated cost model fits in ``LATE_SAFETY`` of the time left; the units
    already stored are reused and the analysis runs again on all seeds. Repeated while the
    estimates leave room (they err on the slow side). Not when the user set ``seeds``.
    """
    name = "data-scaling"
    if (
        name not in s.summaries
        or name not in plan.configs
        or get_dotted(s.inputs.base, "seeds") is not MISSING
    ):
        return plan
    for _ in range(TOP_UP_ROUNDS):
        cfg = plan.configs[name]
        s.recalibrate()
        left = s.clock.left() - REPORT_RESERVE_S
        grown = None
        for seeds in range(cfg.seeds + 1, TOP_UP_MAX_SEEDS + 1):
            bigger = validate({**cfg.model_dump(mode="json"), "seeds": seeds})
            if s.estimator({name: bigger})[name] > LATE_SAFETY * left:
                break
            grown = bigger
        if grown is None:
            break
        s.say(f"{max(left, 0):.0f} s left: data scaling grows from {cfg.seeds} to {grown.seeds} repetitions")
        s.bar.total += _count_units({name: grown}, [name]) - _count_units({name: cfg}, [name])
        s.bar.refresh()
        plan = replace(plan, configs={**plan.configs, name: grown})
        s.state["plan"] = plan.describe()
        done = next(r for r in s.state["experiments"] if r["name"] == name)
        before = float(done.get("seconds", 0.0))
        # the run folder of fewer seeds stays aside until the larger run has its summary
        folder, aside = s.out_dir / name, s.out_dir / f".{name}.fewer-seeds"
        shutil.rmtree(aside, ignore_errors=True)
        folder.rename(aside)
        kept = s.summaries[name]
        plan = _run_one(name, plan, s)
        if done["status"] == "failed":  # keep what the smaller run found
            shutil.rmtree(folder, ignore_errors=True)
            aside.rename(folder)
            plan = replace(plan, configs={**plan.configs, name: cfg})
            s.state["plan_configs"][name] = cfg_json(cfg)
            s.state["plan"] = plan.describe()
            done.update(status="done", note=f"more repetitions failed: {done.get('note', '')}")
            s.summaries[name] = kept
            save_state(s.out_dir, s.state)
            break
        shutil.rmtree(aside, ignore_errors=True)
        done["seconds"] = round(before + float(done.get("seconds", 0.0)), 1)
        save_state(s.out_dir, s.state)
    return plan


def _adjust(
    name: str,
    plan: Plan,
    state: dict[str, Any],
    inputs: Inputs,
    estimator: Estimator,
    left: float,
    bar: Any,
    say: Callable[[str], None],
) -> Plan:
    """Re-plan the rest from experiment ``name`` on (:func:`replan`) when it is estimated past
    ``LATE_SAFETY`` of the ``left`` seconds (running late: it shrinks, experiments may be
    dropped) or below ``GROW_BELOW`` of them (ahead of time: early stopping, a faster machine
    than the probe saw; it grows, experiments dropped earlier may come back); else ``plan``."""
    later = [n for n in EXPERIMENTS[EXPERIMENTS.index(name) :] if n in available_experiments()]
    current = {n: plan.configs[n] for n in later if n in plan.configs}
    now = sum(estimator(current).values())
    late = now > LATE_SAFETY * left
    if not late and now >= GROW_BELOW * left:
        return plan
    new = replan(inputs, plan, estimator, LATE_SAFETY * left, later)
    after = sum(estimator({n: new.configs[n] for n in later if n in new.configs}).values())
    if not late and (not new.fits or after <= now):
        return plan
    if new.tail == plan.tail and set(new.configs) == set(plan.configs):
        return plan
    costs = estimator.costs
    why = (
        f"costs x{costs.factor:.2f}, early stopping ends training after {costs.stop_fraction:.0%} of "
        f"the planned steps, {max(left, 0):.0f} s left"
    )
    say(
        f"running late ({why}): shrank the rest of the plan"
        if late
        else f"ahead of time ({why}): grew the rest of the plan"
    )
    for n in later:
        say(f"  {n:<18} {describe_config(new.configs[n]) if n in new.configs else 'dropped'}")
    for gone in set(plan.configs) - set(new.configs):
        state["notes"].append(f"{gone}: dropped to stay within the budget.")
    bar.total = bar.n + _count_units(new.configs, later)
    bar.refresh()
    state.update(plan=new.describe(), tail=asdict(new.tail))
    return new


def _done_keys(plan: Plan, name: str) -> list[str]:
    """Keys of the units of the experiments before ``name`` (already run: shared units are free)."""
    keys: list[str] = []
    for n in EXPERIMENTS[: EXPERIMENTS.index(name)]:
        if n in plan.configs:
            keys += [u.key for u in plan_units(n, plan.configs[n])]
    return keys


def _count_units(configs: Mapping[str, AnyConfig], names: Sequence[str]) -> int:
    return sum(len({u.key for u in plan_units(n, configs[n])}) for n in names if n in configs)


def _echo_plan(echo: Callable[[str], None], probe: Probe, plan: Plan, budget_s: float, workers: int) -> None:
    """Print what the probe measured and what the planner chose."""
    echo(
        f"probe {probe.seconds:.1f} s ({probe.threads} thread(s) per unit, {workers} worker(s), "
        f"contention x{probe.contention:.2f}): "
        f"train step {probe.step_s:.3g} s (batch {probe.batch}), eNTK {probe.feature_s:.3g} s/sample "
        f"+ {probe.pair_s * 1e6:.3g} µs/entry, data {probe.load_s:.2g} s; "
        f"{probe.n_params} parameters, {probe.num_outputs} output(s)"
    )
    if not probe.lr_stable:
        echo(
            f"  warning: training diverged in the probe even at learning rate {probe.lr:.3g}; set train.lr lower"
        )
    echo(f"plan for a budget of {budget_s / 60:.3g} min (estimated {plan.total / 60:.2f} min of work):")
    for name, cfg in plan.configs.items():
        echo(f"  {name:<18} {describe_config(cfg)}  (~{plan.estimates.get(name, 0):.0f} s)")
    if not plan.fits:
        echo("  warning: even the smallest plan is estimated past the budget; late units will be skipped.")
