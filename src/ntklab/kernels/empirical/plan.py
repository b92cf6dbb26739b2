"""The plan of an eNTK computation: which parameters are read from which layer, which fall back.

A :class:`ModelPlan` (built by :func:`ntklab.kernels.empirical.probe.build_plan`) holds the
differentiated parameters, the recognised layers (:class:`LayerPlan`, each with its adapter
and probed sizes) and the parameters left to the generic ``torch.func`` fallback. Sizes use
one layout for every layer: b = batch, T = positions, K = input features per position (``O``
for norm layers), O = output features, C' = cotangents.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call

from ntklab.kernels.empirical.adapters import Adapter


@dataclass
class LayerPlan:
    """One recognised layer whose chosen parameters are read from its factors.

    Attributes
    ----------
    name : str
        Module path in the model.
    adapter : Adapter
        Reads the factors.
    weight, bias : str or None
        Full names of the differentiated weight/bias (None: frozen or absent).
    T, K, O : int
        Positions, input features per position (``O`` for norm layers), output features;
        filled by the probe of :func:`~ntklab.kernels.empirical.probe.build_plan`.
    route : {"jacobian", "gram"}
        How the eNTK contribution is computed (see :mod:`ntklab.kernels.empirical.route`).
    """

    name: str
    adapter: Adapter
    weight: str | None
    bias: str | None
    T: int = 0
    K: int = 0
    O: int = 0
    route: str = "jacobian"

    @property
    def kind(self) -> str:
        return self.adapter.kind

    @property
    def n_params(self) -> int:
        """Differentiated scalars of this layer."""
        w = (self.O * self.K if self.kind == "affine" else self.O) if self.weight else 0
        return w + (self.O if self.bias else 0)

    @property
    def gram_ok(self) -> bool:
        """Whether the Gram (structured) route applies: affine layers only."""
        return self.kind == "affine"


@dataclass
class ModelPlan:
    """How the per-sample derivatives of a model are obtained.

    Attributes
    ----------
    model : nn.Module
    params : dict[str, Tensor]
        Differentiated parameters (detached), in ``named_parameters`` order.
    fixed : dict[str, Tensor]
        Frozen parameters and buffers.
    n_outputs : int
        C, outputs per sample.
    layers : list[LayerPlan]
        Layers read from factors.
    fallback : list[str]
        Names of differentiated parameters handled by per-sample ``torch.func`` VJPs.
    act_numel : int
        Scalars of all module outputs for one sample (a proxy for forward memory).
    fallback_vmap : bool
        Whether the fallback uses ``torch.func`` (False after it failed on this model).
    fallback_checked : bool
        Whether the ``torch.func`` fallback was checked against autograd on this model.
    """

    model: nn.Module
    params: dict[str, torch.Tensor]
    fixed: dict[str, torch.Tensor]
    n_outputs: int
    layers: list[LayerPlan] = field(default_factory=list)
    fallback: list[str] = field(default_factory=list)
    act_numel: int = 0
    fallback_vmap: bool = True
    fallback_checked: bool = False

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.params.values())).dtype

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.params.values())

    @property
    def fallback_params(self) -> int:
        return sum(self.params[n].numel() for n in self.fallback)


def prepare_input(x: torch.Tensor, plan_dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Move ``x`` to the model's device; floating inputs take the model's dtype."""
    if x.is_floating_point():
        return x.to(device=device, dtype=plan_dtype)
    return x.to(device=device)


def call_model(model: nn.Module, tensors: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Model outputs (b, C) for a batch, with parameters/buffers taken from ``tensors``."""
    out = functional_call(model, tensors, (x,))
    return out.reshape(x.shape[0], -1)


def layer_summary(plan: ModelPlan) -> Sequence[str]:
    """One line per layer for debug logs."""
    return [
        f"{lp.name or '<root>'}: {type(lp.adapter.module).__name__} T={lp.T} K={lp.K} O={lp.O} route={lp.route}"
        for lp in plan.layers
    ]
