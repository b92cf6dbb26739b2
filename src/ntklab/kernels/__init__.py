"""Kernels: empirical NTK of any module, infinite-width NTK/NNGP, kernel metrics."""

from ntklab.kernels.empirical import empirical_ntk

__all__ = ["empirical_ntk"]
