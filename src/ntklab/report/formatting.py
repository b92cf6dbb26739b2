"""How a summary's numbers are displayed: every report, verdict and printed table uses these,
so a reader (or a test) finds in the text exactly the values of the summary, rounded.

>>> fmt_num(681.4123), fmt_exp(0.42), fmt_alpha({"alpha": 1, "ci_low": 0.5, "ci_high": 2})
('681.4', '0.420', 'α = 1.000 [0.500, 2.000]')
>>> fmt_pct(0.25), ci_level({"ci": 0.9}), fmt_num(None)
('25%', '90%', 'nan')
"""

from __future__ import annotations

import math
from typing import Any

from ntklab.config.sections import FitConfig


def _finite_float(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def fmt_num(x: Any) -> str:
    """A measured number for display: 4 significant digits (``nan`` when missing)."""
    v = _finite_float(x)
    return "nan" if v is None else f"{v:.4g}"


def fmt_exp(x: Any) -> str:
    """An exponent or CI bound for display: 3 decimals (``nan`` when missing)."""
    v = _finite_float(x)
    return "nan" if v is None else f"{v:.3f}"


def fmt_alpha(e: dict[str, Any]) -> str:
    """``α = 0.420 [0.370, 0.470]``: an exponent with its confidence interval."""
    return f"α = {fmt_exp(e.get('alpha'))} [{fmt_exp(e.get('ci_low'))}, {fmt_exp(e.get('ci_high'))}]"


def fmt_pct(x: Any) -> str:
    """A fraction as a whole percentage, ``62%``."""
    v = _finite_float(x)
    return "nan" if v is None else f"{100 * v:.0f}%"


def ci_level(summary: dict[str, Any]) -> str:
    """The confidence level of the summary's intervals (``fit.ci``, stored as ``ci``), ``95%``;
    a summary without it was fitted at the default ``fit.ci``."""
    ci = summary.get("ci")
    if not isinstance(ci, (int, float)) or isinstance(ci, bool):
        ci = FitConfig.model_fields["ci"].default
    return f"{100 * float(ci):g}%"
