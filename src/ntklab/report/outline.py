"""The outline of a report, the one place that decides what it shows and in what order.

:func:`outline` turns the runs read by :func:`ntklab.report.runs.collect` into a
:class:`~ntklab.report.model.Report`:

1. key facts (model, data, budget, time, ...);
2. **Verdicts**: every experiment's verdicts (:mod:`ntklab.report.verdicts`), once;
3. one section per experiment: the exponent table with its confidence intervals
   (:mod:`ntklab.report.exponent_table`), the kernel-evolution numbers, every figure;
4. **Notes**: experiments or units skipped or failed.
"""

from __future__ import annotations

from typing import Any

from ntklab.experiments import REGISTRY
from ntklab.experiments.kernel_evolution import HEADLINE_KEYS, SUMMARY_KEYS
from ntklab.report.exponent_table import exponent_table
from ntklab.report.formatting import fmt_exp, fmt_num
from ntklab.report.model import Figure, Report, Section, Table, VerdictLine
from ntklab.report.runs import ExperimentRun, RunFolder
from ntklab.report.verdicts import verdicts


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def evolution_table(summary: dict[str, Any]) -> Table | None:
    """Rows (quantity, value) of a kernel-evolution summary: the verdicts, the scalar numbers
    (the experiment's headline keys, then its summary keys, first), the angle of each decade of training and α(t) of kernel
    regression with K_t; None without an ``evolution`` entry."""
    ev = summary.get("evolution") or {}
    first = [k for k in (*HEADLINE_KEYS, *SUMMARY_KEYS) if k in ev]
    keys = list(dict.fromkeys(first)) + [k for k, v in ev.items() if k not in first and _is_number(v)]
    words = [[k, str(ev[k])] for k in ("verdict", "verdict_half_resolution") if isinstance(ev.get(k), str)]
    numbers = [[k, fmt_num(ev[k])] for k in keys if _is_number(ev[k])]
    decades = [
        [f"decade_angle epochs {fmt_num(d['from_epoch'])}–{fmt_num(d['to_epoch'])}", fmt_num(d["angle"])]
        for d in ev.get("decade_angles") or []
    ]
    alphas = [
        [
            f"kt_alpha step {e['step']} (epoch {fmt_num(e['epoch'])})",
            f"{fmt_exp(e['alpha'])} [{fmt_exp(e['ci_low'])}, {fmt_exp(e['ci_high'])}]",
        ]
        for e in ev.get("kt_exponents") or []
    ]
    rows = words + numbers + decades + alphas
    return Table(["quantity", "value"], rows, numeric_from=1) if rows else None


def experiment_section(run: ExperimentRun) -> Section:
    """One experiment: its exponent table, kernel-evolution numbers and figures."""
    tables = [t for t in (exponent_table(run.summary), evolution_table(run.summary)) if t is not None]
    figures = [Figure(f, run.figure_link(f), f"{run.name}: {f.stem}") for f in run.figures]
    title = REGISTRY[run.name].TITLE if run.name in REGISTRY else run.name
    return Section(title, anchor=run.name, tables=tables, figures=figures)


def outline(runs: RunFolder) -> Report:
    """The report of ``runs``: facts, the verdicts once, one section per experiment, notes."""
    report = Report(runs.title, list(runs.facts))
    lines = [VerdictLine(run.name, v) for run in runs.experiments for v in verdicts(run.summary)]
    if lines:
        report.sections.append(Section("Verdicts", verdicts=lines))
    report.sections += [experiment_section(run) for run in runs.experiments]
    if runs.notes:
        report.sections.append(Section("Notes", notes=list(runs.notes)))
    return report
