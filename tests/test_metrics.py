"""Kernel distance, alignment, relative error, spectrum: definitions checked on known cases."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ntklab.kernels.metrics import alignment, kernel_distance, relative_error, spectrum


def psd(seed: int, n: int = 6, r: int = 4) -> np.ndarray:
    f = np.random.default_rng(seed).normal(size=(n, r))
    return f @ f.T


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 10_000), st.floats(1e-3, 1e3))
def test_distance_properties(s1: int, s2: int, c: float) -> None:
    a, b = psd(s1), psd(s2)
    assert abs(kernel_distance(a, a)) < 1e-12
    assert abs(kernel_distance(a, c * a)) < 1e-12
    assert abs(kernel_distance(a, b) - kernel_distance(b, a)) < 1e-12
    assert -1e-12 <= kernel_distance(a, b) <= 1 + 1e-12


def test_alignment_by_hand() -> None:
    k = np.array([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    y = np.array([1.0, 1.0, -1.0])
    h = np.eye(3) - 1 / 3
    kc, yc = h @ k @ h, h @ np.outer(y, y) @ h
    expected = (kc * yc).sum() / np.sqrt((kc**2).sum() * (yc**2).sum())
    assert abs(alignment(k, y) - expected) < 1e-12
    # the target kernel itself is perfectly aligned
    assert abs(alignment(np.outer(y, y), y) - 1) < 1e-12


def test_relative_error_and_spectrum() -> None:
    a = psd(3)
    assert relative_error(a, a) == 0
    assert abs(relative_error(1.1 * a, a) - 0.1) < 1e-12
    top, eff = spectrum(np.diag([4.0, 1.0, 1.0, 0.0]), top=2)
    np.testing.assert_allclose(top, [4, 1])
    assert abs(eff - 36 / 18) < 1e-12
