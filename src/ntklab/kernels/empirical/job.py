"""One eNTK computation as the engines see it: its inputs and choices (:class:`Job`), where it
writes, and what it measures (:class:`Stats`, returned through ``empirical_ntk(stats=...)``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ntklab.kernels.empirical.mode import Mode
from ntklab.kernels.empirical.plan import ModelPlan
from ntklab.kernels.empirical.sink import KernelSink


@dataclass
class Stats:
    """What one computation did.

    Attributes
    ----------
    tiles, panel, chunk : int
        Blocks computed; samples per row panel and per column chunk (``ntvp``: per tile).
    features_s, contract_s : float
        Seconds building features and contracting them (device synchronized).
    contract_flops : float
        Flops of the contractions' matrix products.
    """

    tiles: int = 0
    panel: int = 0
    chunk: int = 0
    features_s: float = 0.0
    contract_s: float = 0.0
    contract_flops: float = 0.0


@dataclass
class Job:
    """The kernel of ``x1`` (n1, ...) and ``x2`` (n2, ...) in ``mode``, written to ``sink``.

    ``sym``: ``x2`` is ``x1`` and only blocks on and above the diagonal are computed;
    ``budget`` in bytes; ``tile`` samples per tile (None: from the budget); ``progress`` as
    for :func:`ntklab.progress.progress_bar` (None: only on a terminal).
    """

    plan: ModelPlan
    x1: torch.Tensor
    x2: torch.Tensor
    sym: bool
    mode: Mode
    budget: int
    tile: int | None
    progress: bool | None
    sink: KernelSink
    stats: Stats = field(default_factory=Stats)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a timer read after it counts that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
