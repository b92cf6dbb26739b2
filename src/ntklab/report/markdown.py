"""The report as Markdown (``report.md``): figures as links relative to the report's folder."""

from __future__ import annotations

from ntklab.report.model import Report, Section, Table


def _table(table: Table) -> list[str]:
    out = [table.caption, ""] if table.caption else []
    out += ["| " + " | ".join(table.header) + " |", "|" + "|".join("---" for _ in table.header) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in table.rows]
    return out + [""]


def _section(sec: Section) -> list[str]:
    lines = [f"## {sec.title}", ""]
    for table in sec.tables:
        lines += _table(table)
    if sec.verdicts:
        lines += [
            f"- **{line.experiment} — {line.verdict.finding}** [{line.verdict.status}]: {line.verdict.text}"
            for line in sec.verdicts
        ] + [""]
    for fig in sec.figures:
        lines += [f"![{fig.caption}]({fig.link})", ""]
    if sec.notes:
        lines += [f"- {n}" for n in sec.notes] + [""]
    return lines


def render_markdown(report: Report) -> str:
    """The report as Markdown."""
    lines = [f"# {report.title}", ""]
    lines += [f"- **{k}**: {v}" for k, v in report.facts]
    lines.append("")
    for sec in report.sections:
        lines += _section(sec)
    return "\n".join(lines)
