"""The exponent table of a summary: one row per fitted method and per paired difference.

The same rows feed the report's table (:func:`exponent_table`) and the table ``ntklab run``
prints (:func:`exponent_text`), both headed by the confidence level of the fit (``fit.ci``,
stored in the summary as ``ci``).

Example
-------
>>> s = {"ci": 0.9, "exponents": {"nn": {"alpha": 0.42, "ci_low": 0.37, "ci_high": 0.47}},
...      "differences": {"nn-entk": {"delta": 0.2, "ci_low": None, "ci_high": None}}}
>>> print(exponent_text(s))  # doctest: +NORMALIZE_WHITESPACE
method                      alpha   90% CI               fit
nn                          0.420   [0.370, 0.470]       ok
difference                  delta   paired 90% CI
nn-entk                     0.200   no CI
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ntklab.report.formatting import ci_level, fmt_exp, fmt_num
from ntklab.report.labels import method_label
from ntklab.report.model import Table


@dataclass(frozen=True)
class ExponentRow:
    """One fitted exponent (or paired difference Δα) as display strings.

    ``alpha`` is α (or Δα), ``ci_low``/``ci_high`` its interval (``nan`` when missing),
    ``has_ci`` whether the fit produced one; ``a``, ``fit`` (``ok``/``bends``) and ``n_range``
    are empty for a difference.
    """

    label: str
    key: str
    alpha: str
    ci_low: str
    ci_high: str
    has_ci: bool
    a: str = ""
    fit: str = ""
    n_range: str = ""

    @property
    def interval(self) -> str:
        """``[0.370, 0.470]``, or ``no CI``."""
        return f"[{self.ci_low}, {self.ci_high}]" if self.has_ci else "no CI"


def method_rows(summary: dict[str, Any]) -> list[ExponentRow]:
    """One row per method of the summary's ``exponents``."""
    return [
        ExponentRow(
            label=method_label(m),
            key=m,
            alpha=fmt_exp(e.get("alpha")),
            ci_low=fmt_exp(e.get("ci_low")),
            ci_high=fmt_exp(e.get("ci_high")),
            has_ci=e.get("ci_low") is not None,
            a=fmt_num(e.get("a")),
            fit="bends" if e.get("fit_ok") is False else "ok",
            n_range=f"{e.get('fit_n_min', '')}–{e.get('fit_n_max', '')}",
        )
        for m, e in summary.get("exponents", {}).items()
    ]


def difference_rows(summary: dict[str, Any]) -> list[ExponentRow]:
    """One row per paired difference Δα of the summary's ``differences``."""
    return [
        ExponentRow(
            label=f"Δα {k}",
            key=k,
            alpha=fmt_exp(d.get("delta")),
            ci_low=fmt_exp(d.get("ci_low")),
            ci_high=fmt_exp(d.get("ci_high")),
            has_ci=d.get("ci_low") is not None,
        )
        for k, d in (summary.get("differences") or {}).items()
    ]


def exponent_table(summary: dict[str, Any]) -> Table | None:
    """The report's table of exponents, then differences (None when the summary has neither)."""
    rows = method_rows(summary) + difference_rows(summary)
    if not rows:
        return None
    level = ci_level(summary)
    header = ["method", "key", "α", f"{level} CI low", f"{level} CI high", "a", "fit", "n range"]
    caption = (
        f"Scaling exponents of {summary.get('metric', 'test_mse')} (L ≈ a·n^(−α); residual bootstrap "
        "CIs over (seed, n) cells; fit 'bends' where the power law misses the curve):"
    )
    return Table(
        header,
        [[r.label, r.key, r.alpha, r.ci_low, r.ci_high, r.a, r.fit, r.n_range] for r in rows],
        numeric_from=2,
        caption=caption,
    )


def exponent_text(summary: dict[str, Any]) -> str:
    """The fixed-width exponent table printed at the end of ``ntklab run``.

    A kernel-evolution summary (no exponents) prints its verdict and α(t) at up to about six
    checkpoints instead.
    """
    level = ci_level(summary)
    methods = method_rows(summary)
    lines = [f"{'method':<24} {'alpha':>8}   {level + ' CI':<20} {'fit':<6}"]
    lines += [f"{r.key:<24} {r.alpha:>8}   {r.interval:<20} {r.fit:<6}" for r in methods]
    ev = summary.get("evolution") or {}
    if not methods and ev.get("verdict"):
        kt = ev.get("kt_exponents") or []
        lines = [f"kernel evolution: {ev['verdict']}"]
        lines += [
            f"alpha(t) at step {e['step']:<8} {fmt_exp(e['alpha']):>8}   "
            + ("no CI" if e.get("ci_low") is None else f"[{fmt_exp(e['ci_low'])}, {fmt_exp(e['ci_high'])}]")
            for e in kt[:: max(1, len(kt) // 6)]
        ]
    elif not methods:
        lines.append("(no exponents: fewer than two grid points finished)")
    diffs = difference_rows(summary)
    if diffs:
        lines.append(f"{'difference':<24} {'delta':>8}   {'paired ' + level + ' CI':<20}")
        lines += [f"{r.key:<24} {r.alpha:>8}   {r.interval:<20}" for r in diffs]
    return "\n".join(lines)
