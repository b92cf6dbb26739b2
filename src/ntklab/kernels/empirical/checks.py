"""The eNTK is only defined when samples do not interact inside a batch: refuse models that mix
them (:func:`check_per_sample`, raising :class:`ModelError`)."""

from __future__ import annotations

import torch
from torch import nn

from ntklab.errors import NtkLabError
from ntklab.kernels.empirical.plan import call_model


class ModelError(NtkLabError):
    """A model cannot have an empirical NTK as given (it mixes samples, is random, ...)."""


def _batchnorms_in_training(model: nn.Module) -> list[str]:
    return [
        n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
    ]


def check_per_sample(model: nn.Module, tensors: dict[str, torch.Tensor], x: torch.Tensor) -> None:
    """Refuse models whose output for one sample depends on other samples of the batch.

    BatchNorm in training mode is refused by type; any other mixing (BatchNorm without running
    statistics, attention or pooling across the batch, ...) by perturbing sample 0 of a
    3-sample batch and checking that the outputs of samples 1 and 2 do not move. Randomness in
    the forward (dropout in training mode) is refused too. Buffers are cloned, so the model's
    running statistics are never updated.
    """
    bn = _batchnorms_in_training(model)
    if bn:
        raise ModelError(
            f"the model has BatchNorm {bn[0]!r} in training mode, which mixes the samples of a "
            "batch so the eNTK is undefined; call model.eval() first."
        )
    param_names = {n for n, _ in model.named_parameters()}
    cloned = {k: (v if k in param_names else v.clone()) for k, v in tensors.items()}
    xb = x[:3]
    if len(xb) < 3 and xb.is_floating_point():
        gen = torch.Generator(device=xb.device).manual_seed(0)
        extra = xb[:1] + torch.randn(
            3 - len(xb), *xb.shape[1:], generator=gen, device=xb.device, dtype=xb.dtype
        )
        xb = torch.cat([xb, extra])
    if len(xb) < 2:
        return
    with torch.no_grad():
        out = call_model(model, cloned, xb)
        again = call_model(model, cloned, xb)
        scale = float(out.abs().max()) + 1e-30
        tol = (1e-9 if out.dtype == torch.float64 else 1e-4) * scale
        if float((out - again).abs().max()) > tol:
            raise ModelError(
                "the model gives different outputs for the same batch (dropout or other randomness "
                "in training mode?), so its eNTK is undefined; call model.eval() first."
            )
        xp = xb.clone()
        if xp.is_floating_point():
            gen = torch.Generator(device=xp.device).manual_seed(1)
            noise = torch.randn(xp.shape[1:], generator=gen, device=xp.device, dtype=xp.dtype)
            xp[0] = xp[0] + noise * (xp.std() + 1.0)
        else:
            xp[0] = xb[1]
        moved = call_model(model, cloned, xp)
        if float((moved[1:] - out[1:]).abs().max()) > tol:
            raise ModelError(
                "the model mixes the samples of a batch (changing one input changed the outputs "
                "of the others), so per-sample derivatives and the eNTK are undefined; use eval "
                "mode or a model that treats samples independently."
            )
