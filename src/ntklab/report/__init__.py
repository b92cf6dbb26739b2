"""Figures and reports.

A report is read from run directories (:mod:`~ntklab.report.runs`), laid out once as data
(:mod:`~ntklab.report.outline` builds a :mod:`~ntklab.report.model` Report) and drawn as
Markdown and self-contained HTML (:mod:`~ntklab.report.markdown`, :mod:`~ntklab.report.html`;
:mod:`~ntklab.report.write` writes both). Verdicts (:mod:`~ntklab.report.verdicts`), tables
(:mod:`~ntklab.report.exponent_table`) and figures share the method names of
:mod:`~ntklab.report.labels` and the number formats of :mod:`~ntklab.report.formatting`.
"""
