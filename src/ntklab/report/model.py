"""The report as data: what both renderers (:mod:`ntklab.report.markdown`,
:mod:`ntklab.report.html`) draw, built once by :func:`ntklab.report.outline.outline`.

A :class:`Report` is a title, key facts and a list of :class:`Section`; a section holds, in the
order it is drawn, its tables (each with the sentence that introduces it), verdict lines,
figures and notes. Every string is final display text (numbers already formatted).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ntklab.report.verdicts.comparisons import Verdict


@dataclass(frozen=True)
class Table:
    """A table of display strings.

    Attributes
    ----------
    header : list of str
    rows : list of list of str
        One list per row, as long as ``header``.
    numeric_from : int
        Columns from this index on hold numbers (right-aligned in HTML).
    caption : str
        The sentence shown before the table (empty for none).
    """

    header: list[str]
    rows: list[list[str]]
    numeric_from: int
    caption: str = ""


@dataclass(frozen=True)
class VerdictLine:
    """One verdict, with the experiment it is about."""

    experiment: str
    verdict: Verdict


@dataclass(frozen=True)
class Figure:
    """A PNG figure: ``path`` to read (HTML embeds it), ``link`` relative to the report's folder."""

    path: Path
    link: str
    caption: str


@dataclass
class Section:
    """One titled part of the report; ``anchor`` names an experiment's section (HTML ``id``)."""

    title: str
    anchor: str = ""
    tables: list[Table] = field(default_factory=list)
    verdicts: list[VerdictLine] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    """Title, key facts (label, value) shown at the top, and the sections."""

    title: str
    facts: list[tuple[str, str]] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
