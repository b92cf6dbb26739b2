"""Run an experiment into a run directory: plan units, execute the missing ones, analyze, write.

The run directory holds ``config.toml`` (resolved), ``results.csv`` (tidy), ``summary.json``,
``units.json`` (every unit with its status and what this run did with it) and the figures.
Unit results live in a content-addressed store shared by all runs, so a re-run (after a crash,
or of another experiment that needs the same kernel) computes only what is missing.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ntklab import experiments
from ntklab.arch.factory import check_output
from ntklab.config.base import BaseExperiment
from ntklab.config.loading import read_toml, to_toml, validate
from ntklab.errors import ConfigError, ResourceError, RunDirError
from ntklab.experiments.common import build_spec, init_model
from ntklab.experiments.tidy import COLUMNS
from ntklab.run.context import RunContext
from ntklab.run.lease import holding
from ntklab.run.local import LocalExecutor
from ntklab.run.resources import Shape, check_resources
from ntklab.run.results import StoredResults, UnreadableResult
from ntklab.run.schedule import Outcome, with_threads
from ntklab.run.store import Store, atomic_write, default_store

log = logging.getLogger(__name__)
REREADS = 3  # analyses tried while large entries read during them turn out corrupt


def default_out(cfg: BaseExperiment) -> Path:
    return Path("runs") / f"{cfg.experiment}-{cfg.digest()}"


def read_run_meta(out: Path) -> dict[str, Any] | None:
    """``out/run.json`` as a dict (None if absent); a one-sentence error if it is not ntklab's JSON."""
    meta = out / "run.json"
    if not meta.is_file():
        return None
    try:
        info = json.loads(meta.read_text())
    except (OSError, ValueError):
        info = None
    if not isinstance(info, dict) or not isinstance(info.get("digest"), str):
        raise RunDirError(f"{meta} is not a readable ntklab run record; remove it or choose another --out.")
    return info


def recorded_digest(out: Path) -> str | None:
    """The digest of ``out/config.toml`` read by this version (None if it cannot be read).

    A config recorded by an earlier version lacks the fields added since; read now, they take
    their defaults, which keep the earlier behaviour, so the same experiment has the same digest.
    A value the record holds is never replaced, so a changed default still counts as a change.
    """
    try:
        return validate(read_toml(out / "config.toml")).digest()
    except ConfigError:
        return None


def prepare_run_dir(cfg: BaseExperiment, out: Path, store: Store) -> None:
    """Create ``out`` or check that it holds this same config; never mix two configs.

    The same config is the same digest, either the one ``run.json`` records or that of the
    recorded ``config.toml`` read by this version (:func:`recorded_digest`: a run directory of an
    earlier ntklab resumes after an upgrade that only added config fields).
    ``run.json`` is written first, so a second run of the same config starting at the same
    moment sees either nothing of this one (hidden temporary files aside) or its record.
    """
    old = read_run_meta(out)
    if old is not None:
        if cfg.digest() != old.get("digest") and cfg.digest() != recorded_digest(out):
            raise RunDirError(
                f"run directory {out} holds a different config (digest {old.get('digest')}, this one "
                f"{cfg.digest()}); choose another --out or remove it."
            )
    elif out.exists() and (not out.is_dir() or any(not p.name.startswith(".") for p in out.iterdir())):
        raise RunDirError(f"run directory {out} exists and is not an ntklab run; choose another --out.")
    out.mkdir(parents=True, exist_ok=True)
    info = {"digest": cfg.digest(), "experiment": cfg.experiment, "store": str(store.root.resolve())}
    atomic_write(out / "run.json", json.dumps(info, indent=1).encode())
    atomic_write(out / "config.toml", to_toml(cfg).encode())


def check_inputs(cfg: BaseExperiment, ctx: RunContext) -> None:
    """Fail before any work on data or architecture problems (one-sentence errors)."""
    s = ctx.splits
    if cfg.arch.factory is None:
        build_spec(cfg.arch, s.num_outputs).shapes(s.input_shape)  # shape errors name the layer
    what = f"the model of {cfg.arch.factory}" if cfg.arch.factory else "the architecture"
    check_output(init_model(ctx, 0).cpu(), torch.as_tensor(s.x_train[:2]), s.num_outputs, what)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, buf.getvalue().encode())


def run_experiment(
    cfg: BaseExperiment,
    out: Path | None = None,
    *,
    executor: Any = None,
    store: Store | None = None,
    retry_failed: bool = False,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Run ``cfg`` into ``out``; returns the summary (also written to ``summary.json``).

    Before any work, the data and architecture (:func:`check_inputs`) and the memory and disk
    the kernels need (:func:`~ntklab.run.resources.check_resources`) are checked. Only the units
    the store lacks are computed (previously failed ones only with ``retry_failed``); a corrupt
    stored entry is recomputed. The tables and exponents depend
    only on the stored results, so an interrupted run, resumed, gives the same files as an
    uninterrupted one.
    """
    t0 = time.perf_counter()
    out = Path(out) if out is not None else default_out(cfg)
    store = store or default_store()
    executor = executor or LocalExecutor()
    exp = experiments.get(cfg.experiment)
    ctx = RunContext(cfg, progress, store)
    check_inputs(cfg, ctx)
    units = exp.plan(cfg)
    files = exp.kernel_files(cfg, store.root / "kernels") if hasattr(exp, "kernel_files") else []
    check_resources(units, kernel_shape(cfg, ctx), store, cfg.kernel.memory_budget_mb, files=files)
    prepare_run_dir(cfg, out, store)
    store.clean_tmp()
    run = dict(retry_failed=retry_failed, progress=progress)
    outcome: Outcome = executor.run(units, ctx, store, **run)
    for _ in range(REREADS):
        results = StoredResults(units, store)
        if results.corrupt:  # discarded: computed again
            outcome.merge(executor.run(results.corrupt, ctx, store, **run))
            results = StoredResults(units, store)
        try:
            with holding(out / ".writing.lock", store.lease_times):  # another run of this config into `out`
                return write_outputs(cfg, out, exp, ctx, units, store, outcome, results, executor, t0)
        except UnreadableResult as exc:  # a large entry read by the analysis did not check out
            unit = next(u for u in units if u.key == exc.key)
            log.warning("%s (unit %s); recomputing it", exc, unit.label)
            store.discard(exc.key)
            outcome.merge(executor.run([unit], ctx, store, **run))
    raise ResourceError(
        f"stored results of {cfg.experiment} stayed unreadable after {REREADS} tries; check the disk."
    )


def kernel_shape(cfg: BaseExperiment, ctx: RunContext) -> Shape:
    """What the size of this run's kernels depends on (for :func:`check_resources`)."""
    s = ctx.splits
    return Shape(len(s.x_val) + len(s.x_test), s.num_outputs, cfg.kernel.mode)


def write_outputs(
    cfg: BaseExperiment,
    out: Path,
    exp: Any,
    ctx: RunContext,
    units: list,
    store: Store,
    outcome: Outcome,
    results: Mapping[str, Any],
    executor: Any,
    t0: float,
) -> dict[str, Any]:
    """Analyze the stored results and write ``units.json``, ``results.csv``, the figures and
    ``summary.json`` into ``out``; returns the summary."""
    write_manifest(out, units, store, outcome)
    rows, extra = exp.analyze(cfg, results, ctx)
    write_csv(out / "results.csv", rows)
    labels = {u.key: u.label for u in units}
    summary = {
        "experiment": cfg.experiment,
        **extra,
        "metric": cfg.fit.metric,
        "ci": cfg.fit.ci,
        "seconds": time.perf_counter() - t0,
        "units": {
            "total": len(labels),
            "computed": len(outcome.computed),
            "cached": len(outcome.cached),
            "failed": len(outcome.failed),
        },
        "failed_units": [{"unit": labels[k], "key": k, "error": e} for k, e in outcome.failed.items()],
        "executor": getattr(executor, "name", type(executor).__name__),
        "config_digest": cfg.digest(),
        "device": str(ctx.device),
        "threads": max(
            (u.threads for u in with_threads(units, getattr(executor, "threads", None))), default=1
        ),
    }
    summary["figures"] = [str(p.name) for p in exp.figures(cfg, rows, summary, out)]
    atomic_write(out / "summary.json", json.dumps(summary, indent=1).encode())
    return summary


def unit_status(units: list, store: Store) -> list[dict[str, str]]:
    """done / failed / missing for every unit (with the error of failed ones)."""
    out = []
    for u in {u.key: u for u in units}.values():
        rec = {"key": u.key, "kind": u.kind, "label": u.label}
        if store.has(u.key):
            rec["status"] = "done"
        elif (fail := store.failure(u.key)) is not None:
            rec["status"], rec["error"] = "failed", fail["error"]
        else:
            rec["status"] = "missing"
        out.append(rec)
    return out


def write_manifest(out: Path, units: list, store: Store, outcome: Outcome | None = None) -> None:
    """``units.json``: every unit with its status, and what this run did with it
    (``this_run``: computed / cached / failed)."""
    status = unit_status(units, store)
    if outcome is not None:
        done = {**dict.fromkeys(outcome.cached, "cached"), **dict.fromkeys(outcome.computed, "computed")}
        done.update(dict.fromkeys(outcome.failed, "failed"))
        for s in status:
            s["this_run"] = done.get(s["key"], "not run")
            if s["key"] in outcome.seconds:
                s["seconds"] = round(outcome.seconds[s["key"]], 3)
    atomic_write(out / "units.json", json.dumps(status, indent=1).encode())
