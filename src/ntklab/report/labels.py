"""Display names of method keys, the one table every report text, table and figure uses.

A method key is ``BASE`` or ``BASE@TAG`` (``nn``, ``entk``, ``ntk``, ``nngp``, ``after_kernel``;
tags ``n0=N0`` of the pre-trained kernel, ``wW`` of width scaling):

>>> method_label("after_kernel@n0=256"), method_label("nn@w64"), method_label("weird")
('after-kernel (n₀ = 256)', 'network (width 64)', 'weird')
"""

from __future__ import annotations

import re

LABELS = {
    "nn": "network",
    "entk": "eNTK at init",
    "ntk": "infinite-width NTK",
    "nngp": "infinite-width NNGP",
    "after_kernel": "after-kernel",
}


def method_label(method: str) -> str:
    """Human name of a method key: ``after_kernel@n0=128`` -> ``after-kernel (n₀ = 128)``."""
    base, _, tag = method.partition("@")
    name = LABELS.get(base, base)
    if not tag:
        return name
    m = re.fullmatch(r"n0=(\w+)", tag)
    if m:
        return f"{name} (n₀ = {m.group(1)})"
    m = re.fullmatch(r"w(?:idth)?=?(\d+)", tag)
    if m:
        return f"{name} (width {m.group(1)})"
    return f"{name} ({tag})"
