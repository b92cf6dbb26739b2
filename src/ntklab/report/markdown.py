"""The report of a finished run as Markdown, and what both report formats are built from.

:func:`collect` reads a run directory into a :class:`ReportData`: one :class:`Section` per
experiment (its ``summary.json``, ``config.toml``, figures and verdicts). It accepts

* a single-experiment run directory (``summary.json`` at the top, from ``ntklab run``);
* an ``ntklab explain`` directory (``explain.json`` naming one run directory per experiment);
* any folder whose sub-folders are run directories.

:func:`render_markdown` writes ``report.md`` with figures as relative links;
:mod:`ntklab.report.html` renders the same content as one self-contained HTML file. Numbers
are printed with the formatters of :mod:`ntklab.report.verdicts`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from ntklab.errors import RunDirError
from ntklab.report.verdicts import Verdict, fmt_exp, fmt_num, method_label, verdicts

TITLES = {
    "data-scaling": "Data scaling: network vs its kernels at initialization",
    "width-scaling": "Width scaling: eNTK at init across widths",
    "pretrained-kernel": "Pre-trained kernel: the after-kernel",
    "kernel-evolution": "Kernel evolution: how the eNTK moves during training",
}
EVOLUTION_KEYS = (
    "total_angle",
    "angular_speed_first_half",
    "angular_speed_second_half",
    "second_over_first_half",
    "last_decade_angle",
    "last_decade_over_max_decade",
    "path_angle",
    "final_distance_to_init",
    "initial_alignment",
    "final_alignment",
    "initial_eff_rank",
    "final_eff_rank",
    "kt_regression_test_loss_init",
    "kt_regression_test_loss_final",
    "kt_regression_test_error_final",
    "nn_test_loss_final",
    "nn_test_error_final",
    "final_epoch",
)


@dataclass
class Section:
    """One experiment of the report.

    Attributes
    ----------
    name : str
        The experiment (``summary["experiment"]``).
    run_dir : Path
        Its run directory.
    rel : str
        ``run_dir`` relative to the report's folder (``""`` for a single run), POSIX style.
    summary : dict
        ``summary.json``.
    config : dict
        ``config.toml`` (empty when missing).
    figures : list of Path
        The PNG figures listed in the summary that exist.
    verdicts : list of Verdict
    """

    name: str
    run_dir: Path
    rel: str
    summary: dict[str, Any]
    config: dict[str, Any]
    figures: list[Path]
    verdicts: list[Verdict]

    @property
    def title(self) -> str:
        return TITLES.get(self.name, self.name)

    def figure_link(self, fig: Path) -> str:
        """Relative link of a figure from the report's folder."""
        return f"{self.rel}/{fig.name}" if self.rel else fig.name


@dataclass
class ReportData:
    """Everything a report shows.

    Attributes
    ----------
    root : Path
        The folder the report is written to.
    title : str
    facts : list of (str, str)
        Key facts shown at the top (model, data, budget, time...).
    sections : list of Section
    notes : list of str
        Experiments skipped, units skipped or failed: what is missing and why.
    """

    root: Path
    title: str
    facts: list[tuple[str, str]] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- collecting


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RunDirError(f"{path} is not readable JSON ({type(exc).__name__}).") from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text()) if path.is_file() else {}
    except (OSError, tomllib.TOMLDecodeError):
        return {}


def load_section(run_dir: Path, root: Path) -> Section:
    """The section of the run directory ``run_dir`` (with ``summary.json``), linked from ``root``."""
    summary = _read_json(run_dir / "summary.json")
    figures = [run_dir / f for f in summary.get("figures", []) if (run_dir / f).is_file()]
    rel = (
        run_dir.resolve().relative_to(root.resolve()).as_posix()
        if run_dir.resolve() != root.resolve()
        else ""
    )
    return Section(
        name=str(summary.get("experiment", run_dir.name)),
        run_dir=run_dir,
        rel=rel,
        summary=summary,
        config=_read_toml(run_dir / "config.toml"),
        figures=figures,
        verdicts=verdicts(summary),
    )


def _model_name(cfg: dict[str, Any]) -> str:
    arch = cfg.get("arch", {})
    if arch.get("factory"):
        return f"user model {arch['factory']}"
    if arch.get("layers"):
        return f"layer spec ({len(arch['layers'])} layers)"
    return f"{arch.get('name', '?')} (depth {arch.get('depth', '?')}, width {arch.get('width', '?')})"


def _data_name(cfg: dict[str, Any]) -> str:
    data = cfg.get("data", {})
    where = f" ({data['path']})" if data.get("path") else ""
    return f"{data.get('name', '?')}{where}"


def collect(run_dir: str | Path) -> ReportData:
    """Read the run directory ``run_dir`` (see the module docstring for what it may be)."""
    root = Path(run_dir)
    if not root.is_dir():
        raise RunDirError(f"{root} is not a directory; give a run directory of ntklab run or ntklab explain.")
    if (root / "explain.json").is_file():
        return _collect_explain(root)
    if (root / "summary.json").is_file():
        sec = load_section(root, root)
        data = ReportData(root, f"ntklab report: {sec.name}")
        data.sections.append(sec)
        data.facts += _run_facts(sec)
        data.notes += _failed_notes(sec)
        return data
    subs = sorted(p for p in root.iterdir() if (p / "summary.json").is_file())
    if not subs:
        raise RunDirError(
            f"{root} is not an ntklab run directory (no summary.json or explain.json, here or one level down)."
        )
    data = ReportData(root, f"ntklab report: {root.name}")
    for p in subs:
        sec = load_section(p, root)
        data.sections.append(sec)
        data.notes += _failed_notes(sec)
    if data.sections:
        data.facts += _run_facts(data.sections[0])[:2]
    return data


def _run_facts(sec: Section) -> list[tuple[str, str]]:
    s, cfg = sec.summary, sec.config
    units = s.get("units", {})
    facts = [
        ("model", _model_name(cfg)),
        ("data", _data_name(cfg)),
        ("experiment", sec.name),
        ("seeds", str(cfg.get("seeds", "?"))),
        ("training-set sizes n", ", ".join(str(n) for n in s.get("n_grid", [])) or "-"),
        ("time", f"{fmt_num(s.get('seconds'))} s"),
    ]
    if units:
        facts.append(
            (
                "units",
                f"{units.get('total', 0)} total, {units.get('computed', 0)} computed, "
                f"{units.get('cached', 0)} cached, {units.get('failed', 0)} failed",
            )
        )
    return facts


def _failed_notes(sec: Section) -> list[str]:
    return [f"{sec.name}: unit {f['unit']} failed: {f['error']}" for f in sec.summary.get("failed_units", [])]


def _collect_explain(root: Path) -> ReportData:
    info = _read_json(root / "explain.json")
    inputs = info.get("inputs", {})
    data = ReportData(root, "ntklab explain: does the NTK explain this network?")
    budget, elapsed = info.get("budget_seconds"), info.get("seconds")
    data.facts += [
        ("model", str(inputs.get("model", "?"))),
        ("data", str(inputs.get("data", "?"))),
        ("budget", f"{fmt_num(budget / 60 if isinstance(budget, (int, float)) else None)} min"),
        ("time", f"{fmt_num(elapsed)} s"),
    ]
    plan = info.get("plan", {})
    if plan:
        data.facts.append(("plan", describe_plan(plan)))
    for exp in info.get("experiments", []):
        run = root / exp.get("dir", exp.get("name", ""))
        if exp.get("status") == "skipped":
            data.notes.append(f"{exp.get('name')}: not run ({exp.get('note', 'no budget left')}).")
            continue
        if not (run / "summary.json").is_file():
            data.notes.append(f"{exp.get('name')}: no results ({exp.get('note', 'it did not finish')}).")
            continue
        sec = load_section(run, root)
        data.sections.append(sec)
        data.notes += _failed_notes(sec)
        if exp.get("skipped_units"):
            data.notes.append(
                f"{exp['name']}: {len(exp['skipped_units'])} unit(s) skipped to stay within the budget "
                f"({', '.join(exp['skipped_units'][:4])}{', ...' if len(exp['skipped_units']) > 4 else ''}); "
                "run the same command again to finish them (finished units are reused)."
            )
    for note in info.get("notes", []):
        data.notes.append(str(note))
    return data


def describe_plan(plan: dict[str, Any]) -> str:
    """One line describing an explain plan (n grid, seeds, steps, n₀, checkpoints)."""
    parts = []
    if "n_grid" in plan:
        parts.append(f"n ∈ {{{', '.join(str(n) for n in plan['n_grid'])}}}")
    for key, label in (
        ("seeds", "seeds"),
        ("steps", "training steps"),
        ("lr", "learning rate"),
        ("n_val", "validation points"),
        ("n_test", "test points"),
        ("n0", "n₀"),
        ("checkpoints", "checkpoints"),
        ("evolution_n", "evolution n"),
    ):
        if plan.get(key) is not None:
            parts.append(f"{label} {plan[key]}")
    return "; ".join(parts)


# ----------------------------------------------------------------------------- tables


def exponent_rows(summary: dict[str, Any]) -> list[list[str]]:
    """Rows (label, key, α, CI low, CI high, a) of the summary's exponents, display-formatted."""
    rows = []
    for m, e in summary.get("exponents", {}).items():
        rows.append(
            [
                method_label(m),
                m,
                fmt_exp(e.get("alpha")),
                fmt_exp(e.get("ci_low")),
                fmt_exp(e.get("ci_high")),
                fmt_num(e.get("a")),
                "bends" if e.get("fit_ok") is False else "ok",
                f"{e.get('fit_n_min', '')}–{e.get('fit_n_max', '')}",
            ]
        )
    for k, d in (summary.get("differences") or {}).items():
        rows.append(
            [
                f"Δα {k}",
                k,
                fmt_exp(d.get("delta")),
                fmt_exp(d.get("ci_low")),
                fmt_exp(d.get("ci_high")),
                "",
                "",
                "",
            ]
        )
    return rows


EXPONENT_HEADER = ["method", "key", "α", "CI low", "CI high", "a", "fit", "n range"]


def evolution_rows(summary: dict[str, Any]) -> list[list[str]]:
    """Rows (quantity, value) of a kernel-evolution summary: the verdicts, the scalar numbers,
    the angle of each decade of training and α(t) of kernel regression with K_t."""
    ev = summary.get("evolution") or {}
    keys = [k for k in EVOLUTION_KEYS if k in ev] + [
        k
        for k, v in ev.items()
        if k not in EVOLUTION_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    words = [[k, str(ev[k])] for k in ("verdict", "verdict_half_resolution") if isinstance(ev.get(k), str)]
    numbers = [
        [k, fmt_num(ev[k])] for k in keys if isinstance(ev[k], (int, float)) and not isinstance(ev[k], bool)
    ]
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
    return words + numbers + decades + alphas


def metric_name(summary: dict[str, Any]) -> str:
    """The fitted metric, e.g. ``test_mse``."""
    return str(summary.get("metric", "test_mse"))


# ----------------------------------------------------------------------------- markdown


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def render_markdown(data: ReportData) -> str:
    """The report as Markdown (figures as links relative to ``data.root``)."""
    lines = [f"# {data.title}", ""]
    for k, v in data.facts:
        lines.append(f"- **{k}**: {v}")
    lines.append("")
    summary_verdicts = [(sec, v) for sec in data.sections for v in sec.verdicts]
    if summary_verdicts:
        lines += ["## Verdicts", ""]
        for sec, v in summary_verdicts:
            lines.append(f"- **{sec.name} — {v.finding}** [{v.status}]: {v.text}")
        lines.append("")
    for sec in data.sections:
        lines += [f"## {sec.title}", ""]
        rows = exponent_rows(sec.summary)
        if rows:
            metric = metric_name(sec.summary)
            lines += [
                f"Scaling exponents of {metric} (L ≈ a·n^(−α); residual bootstrap CIs over (seed, n) cells; "
                "fit 'bends' where the power law misses the curve):",
                "",
            ]
            lines += _md_table(EXPONENT_HEADER, rows) + [""]
        ev = evolution_rows(sec.summary)
        if ev:
            lines += _md_table(["quantity", "value"], ev) + [""]
        for v in sec.verdicts:
            lines.append(f"- *{v.finding}*: {v.text}")
        if sec.verdicts:
            lines.append("")
        for fig in sec.figures:
            lines += [f"![{sec.name}: {fig.stem}]({sec.figure_link(fig)})", ""]
    if data.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in data.notes] + [""]
    return "\n".join(lines)


def finite(x: Any) -> bool:
    """True for a finite real number."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
