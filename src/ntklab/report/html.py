"""The report as ONE self-contained HTML file: figures embedded as base64 PNG, inline CSS.

Same content as :mod:`ntklab.report.markdown` (collected by :func:`~ntklab.report.markdown.collect`):
key facts, the verdicts, and per experiment the exponent table with confidence intervals, the
kernel-evolution numbers and every figure. Nothing is loaded from outside the file.

Example
-------
``write_report("runs/explain-resnet")`` writes ``report.html`` and ``report.md`` there and
returns both paths (``ntklab report RUN_DIR`` does the same).
"""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

from ntklab.report.markdown import (
    EXPONENT_HEADER,
    ReportData,
    collect,
    evolution_rows,
    exponent_rows,
    metric_name,
    render_markdown,
)
from ntklab.run.store import atomic_write

CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; max-width: 1000px;
       margin: 2em auto; padding: 0 1em; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dl.facts dt { font-weight: 600; } dl.facts dd { margin: 0; }
.verdict { border-left: 4px solid #999; padding: 0.3em 0.8em; margin: 0.5em 0; background: #f7f7f7; }
.verdict.does-not-explain { border-color: #c0392b; } .verdict.explains { border-color: #27ae60; }
.verdict.indistinguishable { border-color: #e1a200; } .verdict .finding { font-weight: 600; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; } .notes li { color: #7a4b00; }
"""


def _table(header: list[str], rows: list[list[str]], numeric_from: int) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{escape(c)}</td>' if i >= numeric_from else f"<td>{escape(c)}</td>"
            for i, c in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def png_width(data: bytes) -> int | None:
    """Pixel width of a PNG from its IHDR chunk (None if ``data`` is not a PNG)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) < 24:
        return None
    return int.from_bytes(data[16:20], "big")


def _img(path: Path, alt: str) -> str:
    """A figure with the PNG embedded; shown at half its pixel width (figures are saved at
    200 dpi, so 100 CSS pixels per inch), at most the page width."""
    raw = path.read_bytes()
    width = png_width(raw)
    size = f' width="{width // 2}"' if width else ""
    data = base64.b64encode(raw).decode("ascii")
    return (
        f'<figure><img alt="{escape(alt)}"{size} src="data:image/png;base64,{data}">'
        f"<figcaption>{escape(alt)}</figcaption></figure>"
    )


def render_html(data: ReportData) -> str:
    """The report as a self-contained HTML page."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(data.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(data.title)}</h1>",
    ]
    if data.facts:
        parts.append(
            '<dl class="facts">'
            + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in data.facts)
            + "</dl>"
        )
    all_verdicts = [(sec, v) for sec in data.sections for v in sec.verdicts]
    if all_verdicts:
        parts.append("<h2>Verdicts</h2>")
        for sec, v in all_verdicts:
            parts.append(
                f'<div class="verdict {escape(v.status)}"><span class="finding">'
                f"{escape(sec.name)} — {escape(v.finding)}:</span> {escape(v.text)}</div>"
            )
    for sec in data.sections:
        parts.append(f'<section id="{escape(sec.name)}"><h2>{escape(sec.title)}</h2>')
        rows = exponent_rows(sec.summary)
        if rows:
            parts.append(
                f"<p>Scaling exponents of {escape(metric_name(sec.summary))} (L ≈ a·n<sup>−α</sup>; "
                "bootstrap CIs over seeds and points):</p>"
            )
            parts.append(_table(EXPONENT_HEADER, rows, numeric_from=2))
        ev = evolution_rows(sec.summary)
        if ev:
            parts.append(_table(["quantity", "value"], ev, numeric_from=1))
        for fig in sec.figures:
            parts.append(_img(fig, f"{sec.name}: {fig.stem}"))
        parts.append("</section>")
    if data.notes:
        parts.append('<h2>Notes</h2><ul class="notes">')
        parts += [f"<li>{escape(n)}</li>" for n in data.notes]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.html`` (self-contained) and ``report.md`` into ``run_dir``; return both."""
    data = collect(run_dir)
    root = Path(run_dir)
    html_path, md_path = root / "report.html", root / "report.md"
    atomic_write(html_path, render_html(data).encode("utf-8"))
    atomic_write(md_path, render_markdown(data).encode("utf-8"))
    return html_path, md_path
