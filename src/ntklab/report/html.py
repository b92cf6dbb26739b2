"""The report as ONE self-contained HTML file (``report.html``): figures embedded as base64
PNG, inline CSS, nothing loaded from outside the file. Verdicts are coloured by their status."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

from ntklab.report.model import Report, Section, Table, VerdictLine

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


def _table(table: Table) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in table.header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{escape(c)}</td>' if i >= table.numeric_from else f"<td>{escape(c)}</td>"
            for i, c in enumerate(r)
        )
        + "</tr>"
        for r in table.rows
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


def _verdict(line: VerdictLine) -> str:
    v = line.verdict
    return (
        f'<div class="verdict {escape(v.status)}"><span class="finding">'
        f"{escape(line.experiment)} — {escape(v.finding)}:</span> {escape(v.text)}</div>"
    )


def _section(sec: Section) -> list[str]:
    parts = [f'<section id="{escape(sec.anchor)}">' if sec.anchor else "", f"<h2>{escape(sec.title)}</h2>"]
    for table in sec.tables:
        if table.caption:
            parts.append(f"<p>{escape(table.caption)}</p>")
        parts.append(_table(table))
    parts += [_verdict(line) for line in sec.verdicts]
    parts += [_img(fig.path, fig.caption) for fig in sec.figures]
    if sec.notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{escape(n)}</li>" for n in sec.notes) + "</ul>")
    if sec.anchor:
        parts.append("</section>")
    return [p for p in parts if p]


def render_html(report: Report) -> str:
    """The report as a self-contained HTML page."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(report.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(report.title)}</h1>",
    ]
    if report.facts:
        parts.append(
            '<dl class="facts">'
            + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in report.facts)
            + "</dl>"
        )
    for sec in report.sections:
        parts += _section(sec)
    parts.append("</body></html>")
    return "\n".join(parts)
