"""The layer spec: one description of an architecture, three things derived from it.

Every layer is a small frozen dataclass that knows how to

* compute its output shape from its input shape (``out_shape``),
* build its torch module in ``ntk`` or ``standard`` parameterization (``module``),
* propagate infinite-width NNGP/NTK kernels (``kernel_map``, on a
  :class:`~ntklab.kernels.state.KernelState`; the map lives beside the layer's module).

A :class:`Spec` is a sequence of layers (``serial``); it builds the ``nn.Module`` and the
infinite-width ``kernel_fn`` (:mod:`ntklab.kernels.infinite` composes the layers' maps) from the
same fields, so the network, its eNTK and its NTK cannot drift apart (the idea of
neural-tangents' ``stax``).

Shapes are torch layout without the batch axis: ``(D,)``, ``(C, L)``, ``(C, H, W)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ntklab.errors import ArchError
from ntklab.kernels.infinite import kernel_fn
from ntklab.kernels.state import KernelState

Shape = tuple[int, ...]


class Layer:
    """Base class of every layer of the spec.

    Subclasses are frozen dataclasses; they implement :meth:`out_shape` and :meth:`module`
    and, for the infinite-width kernels, :meth:`kernel_map`.
    """

    name: str = "Layer"

    def out_shape(self, in_shape: Shape) -> Shape:
        """Output shape (no batch axis) for an input of shape ``in_shape``."""
        raise NotImplementedError

    def module(self, in_shape: Shape, generator: torch.Generator) -> nn.Module:
        """Build the torch module for inputs of shape ``in_shape``, initialised from ``generator``."""
        raise NotImplementedError

    def kernel_map(self, state: KernelState) -> KernelState:
        """Propagate the infinite-width kernels through this layer."""
        raise ArchError(f"layer {self.name} has no infinite-width kernel map; use layers that do.")


@dataclass(frozen=True)
class Spec:
    """A serial composition of layers; the single source of the network and its kernels.

    Parameters
    ----------
    layers : tuple of Layer
        Applied in order.
    """

    layers: tuple[Layer, ...]

    def shapes(self, input_shape: Sequence[int]) -> list[Shape]:
        """Input shape of every layer followed by the output shape (len = len(layers) + 1)."""
        shape: Shape = tuple(int(s) for s in input_shape)
        out = [shape]
        for i, layer in enumerate(self.layers):
            try:
                shape = layer.out_shape(shape)
            except ArchError as err:
                raise ArchError(f"layer {i} ({layer.name}): {err}") from None
            out.append(shape)
        return out

    def out_shape(self, input_shape: Sequence[int]) -> Shape:
        """Output shape (no batch axis) for one input of shape ``input_shape``."""
        return self.shapes(input_shape)[-1]

    def kernel_shapes(self, input_shape: Sequence[int]) -> list[Shape]:
        """:meth:`shapes`, checked for the infinite-width kernels: ArchError when a layer has no
        kernel map or the output is not a flat vector."""
        shapes = self.shapes(input_shape)
        for i, layer in enumerate(self.layers):
            if type(layer).kernel_map is Layer.kernel_map:
                raise ArchError(
                    f"layer {i} ({layer.name}) on input shape {shapes[i]} has no infinite-width kernel map; "
                    "use Dense, Conv, Relu, Erf, Identity, AvgPool, GlobalAvgPool or Flatten."
                )
        if len(shapes[-1]) != 1:
            last = self.layers[-1]
            raise ArchError(
                f"the last layer {len(self.layers) - 1} ({last.name}) outputs shape {shapes[-1]}, not a flat "
                "vector; end the spec with GlobalAvgPool or Flatten and a Dense readout."
            )
        return shapes

    def module(self, input_shape: Sequence[int], seed: int = 0) -> nn.Sequential:
        """Build the network for inputs of shape ``(N, *input_shape)``, initialised from ``seed``.

        The same spec and seed always give the same parameters (float32).
        """
        shapes = self.shapes(input_shape)
        gen = torch.Generator().manual_seed(int(seed))
        mods = [layer.module(shapes[i], gen) for i, layer in enumerate(self.layers)]
        return nn.Sequential(*mods)

    def kernel_fn(
        self, x1: torch.Tensor, x2: torch.Tensor | None = None, **kwargs: Any
    ) -> dict[str, torch.Tensor]:
        """Infinite-width NNGP/NTK kernels of this architecture; see :func:`ntklab.kernels.infinite.kernel_fn`."""
        return kernel_fn(self, x1, x2, **kwargs)


def serial(*layers: Layer | Spec) -> Spec:
    """Compose layers (or specs) in order: ``serial(Dense(512), Relu(), Dense(10))``."""
    flat: list[Layer] = []
    for item in layers:
        if isinstance(item, Spec):
            flat.extend(item.layers)
        elif isinstance(item, Layer):
            flat.append(item)
        else:
            raise ArchError(f"serial() takes layers or specs; got {type(item).__name__}.")
    return Spec(tuple(flat))
