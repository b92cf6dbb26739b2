"""Reading what a report shows from a run directory.

:func:`collect` reads a run directory into a :class:`RunFolder`: one :class:`ExperimentRun` per
experiment (its ``summary.json``, ``config.toml`` and figures), key facts and notes. It accepts

* a single-experiment run directory (``summary.json`` at the top, from ``ntklab run``);
* an ``ntklab explain`` directory (``explain.json`` naming one run directory per experiment);
* any folder whose sub-folders are run directories.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from ntklab.errors import RunDirError
from ntklab.report.formatting import fmt_num


@dataclass
class ExperimentRun:
    """One experiment's run directory.

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
    """

    name: str
    run_dir: Path
    rel: str
    summary: dict[str, Any]
    config: dict[str, Any]
    figures: list[Path]

    def figure_link(self, fig: Path) -> str:
        """Relative link of a figure from the report's folder."""
        return f"{self.rel}/{fig.name}" if self.rel else fig.name


@dataclass
class RunFolder:
    """Everything read for a report.

    Attributes
    ----------
    root : Path
        The folder the report is written to.
    title : str
    facts : list of (str, str)
        Key facts shown at the top (model, data, budget, time...).
    experiments : list of ExperimentRun
    notes : list of str
        Experiments skipped, units skipped or failed: what is missing and why.
    """

    root: Path
    title: str
    facts: list[tuple[str, str]] = field(default_factory=list)
    experiments: list[ExperimentRun] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


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


def load_run(run_dir: Path, root: Path) -> ExperimentRun:
    """The experiment of the run directory ``run_dir`` (with ``summary.json``), linked from ``root``."""
    summary = _read_json(run_dir / "summary.json")
    figures = [run_dir / f for f in summary.get("figures", []) if (run_dir / f).is_file()]
    rel = (
        run_dir.resolve().relative_to(root.resolve()).as_posix()
        if run_dir.resolve() != root.resolve()
        else ""
    )
    return ExperimentRun(
        name=str(summary.get("experiment", run_dir.name)),
        run_dir=run_dir,
        rel=rel,
        summary=summary,
        config=_read_toml(run_dir / "config.toml"),
        figures=figures,
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


def collect(run_dir: str | Path) -> RunFolder:
    """Read the run directory ``run_dir`` (see the module docstring for what it may be)."""
    root = Path(run_dir)
    if not root.is_dir():
        raise RunDirError(f"{root} is not a directory; give a run directory of ntklab run or ntklab explain.")
    if (root / "explain.json").is_file():
        return _collect_explain(root)
    if (root / "summary.json").is_file():
        run = load_run(root, root)
        data = RunFolder(root, f"ntklab report: {run.name}")
        data.experiments.append(run)
        data.facts += _run_facts(run)
        data.notes += _failed_notes(run)
        return data
    subs = sorted(p for p in root.iterdir() if (p / "summary.json").is_file())
    if not subs:
        raise RunDirError(
            f"{root} is not an ntklab run directory (no summary.json or explain.json, here or one level down)."
        )
    data = RunFolder(root, f"ntklab report: {root.name}")
    for p in subs:
        run = load_run(p, root)
        data.experiments.append(run)
        data.notes += _failed_notes(run)
    if data.experiments:
        data.facts += _run_facts(data.experiments[0])[:2]
    return data


def _run_facts(run: ExperimentRun) -> list[tuple[str, str]]:
    s, cfg = run.summary, run.config
    units = s.get("units", {})
    facts = [
        ("model", _model_name(cfg)),
        ("data", _data_name(cfg)),
        ("experiment", run.name),
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


def _failed_notes(run: ExperimentRun) -> list[str]:
    return [f"{run.name}: unit {f['unit']} failed: {f['error']}" for f in run.summary.get("failed_units", [])]


def _collect_explain(root: Path) -> RunFolder:
    info = _read_json(root / "explain.json")
    inputs = info.get("inputs", {})
    data = RunFolder(root, "ntklab explain: does the NTK explain this network?")
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
        run_dir = root / exp.get("dir", exp.get("name", ""))
        if exp.get("status") == "skipped":
            data.notes.append(f"{exp.get('name')}: not run ({exp.get('note', 'no budget left')}).")
            continue
        if not (run_dir / "summary.json").is_file():
            data.notes.append(f"{exp.get('name')}: no results ({exp.get('note', 'it did not finish')}).")
            continue
        run = load_run(run_dir, root)
        data.experiments.append(run)
        data.notes += _failed_notes(run)
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
