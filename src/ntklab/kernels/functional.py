"""A functional view of any ``nn.Module`` for per-sample derivatives (``torch.func``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call


@dataclass(frozen=True)
class FunctionalModel:
    """``f(params, x)`` for one sample, with the trainable parameters split out.

    Attributes
    ----------
    params : dict[str, Tensor]
        Detached trainable parameters that the eNTK differentiates (frozen ones excluded).
    fixed : dict[str, Tensor]
        Buffers and frozen parameters, passed unchanged.
    n_outputs : int
        C, the number of outputs of the model for one sample.
    """

    model: nn.Module
    params: dict[str, torch.Tensor]
    fixed: dict[str, torch.Tensor]
    n_outputs: int

    def single(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Outputs (C,) for one sample ``x`` (no batch axis)."""
        out = functional_call(self.model, {**params, **self.fixed}, (x.unsqueeze(0),))
        return out.reshape(-1)

    @property
    def n_params(self) -> int:
        """P, the number of trainable scalars."""
        return sum(p.numel() for p in self.params.values())

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.params.values())).dtype


def functionalize(
    model: nn.Module,
    sample: torch.Tensor,
    params: Callable[[str, torch.Tensor], bool] | None = None,
) -> FunctionalModel:
    """Split ``model`` into differentiated parameters and fixed tensors.

    ``params`` selects parameters by ``(name, tensor)``; the default takes every parameter with
    ``requires_grad``. ``sample`` is one batch (N, ...) used to read the number of outputs.
    """
    select = params or (lambda name, p: p.requires_grad)
    chosen = {n: p.detach() for n, p in model.named_parameters() if select(n, p)}
    fixed = {n: p.detach() for n, p in model.named_parameters() if n not in chosen}
    fixed.update({n: b for n, b in model.named_buffers()})
    with torch.no_grad():
        out = model(sample[:1].to(next(model.parameters()).device))
    return FunctionalModel(model, chosen, fixed, int(out[0].numel()))
