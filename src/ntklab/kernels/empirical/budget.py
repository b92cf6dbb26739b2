"""Shares of the eNTK memory budget, read by the engines and by the cost model of ``explain``.

``memory_budget_bytes`` bounds the working memory of one :func:`~ntklab.kernels.empirical_ntk`
call (the result itself comes on top unless it is written to disk); the shares below need
not sum to 1: the rest is headroom for the allocator and the input batch.
"""

from __future__ import annotations

#: Default ``memory_budget_bytes`` of :func:`~ntklab.kernels.empirical_ntk`.
DEFAULT_BUDGET = 2**30

#: Features (per-sample Jacobians and Gram factors) of a row panel and a column chunk.
FEATURES_SHARE = 0.35
#: Symmetric case (``x2=None``): one panel holding every sample's features, no column buffer.
RESIDENT_SHARE = 0.55
#: Capture workspace: forward activations, C' backward passes, unfolded patches.
CAPTURE_SHARE = 0.2
#: Gram-route temporaries.
GRAM_SHARE = 0.08
#: Float64 output sub-tile and its products in the model's dtype.
OUTPUT_SHARE = 0.08
#: Pages of an ``out=`` memmap written before they are flushed and dropped from memory.
FLUSH_SHARE = 0.05
#: NTK-vector products: the forward activations of one tile's JVPs.
NTVP_TILE_SHARE = 0.25
