"""Writing the report of a run directory: ``report.html`` (self-contained) and ``report.md``.

Example
-------
``write_report("runs/explain-resnet")`` writes ``report.html`` and ``report.md`` there and
returns both paths (``ntklab report RUN_DIR`` does the same).
"""

from __future__ import annotations

from pathlib import Path

from ntklab.report.html import render_html
from ntklab.report.markdown import render_markdown
from ntklab.report.outline import outline
from ntklab.report.runs import collect
from ntklab.run.store import atomic_write


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` into ``run_dir`` (see
    :mod:`ntklab.report.runs` for what it may be); return both paths."""
    report = outline(collect(run_dir))
    root = Path(run_dir)
    html_path, md_path = root / "report.html", root / "report.md"
    atomic_write(html_path, render_html(report).encode("utf-8"))
    atomic_write(md_path, render_markdown(report).encode("utf-8"))
    return html_path, md_path
