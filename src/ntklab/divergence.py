"""Why a training loss became NaN or infinite: the inputs, the model, or the learning rate.

A user who is told to lower the learning rate when their inputs are the problem turns the
wrong knob. :func:`nan_loss_message` looks at the batch that gave the bad loss and names the
likely cause in one sentence.
"""

from __future__ import annotations

import torch

LARGE_INPUT = 1e4  # |x| beyond this (standardized inputs are O(1)) makes the inputs the suspect


def nan_loss_message(loss: float, step: int, inputs: torch.Tensor, lr: float) -> str:
    """One sentence: the loss ``loss`` at ``step`` on a batch ``inputs`` trained at ``lr``."""
    head = f"training loss became {loss} at step {step}"
    x = inputs.detach()
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        return f"{head}: the batch inputs hold NaN or inf, so the inputs are the cause; check the data."
    peak = float(x.abs().max()) if x.numel() else 0.0
    if peak > LARGE_INPUT:
        return (
            f"{head}: the batch inputs reach |x| = {peak:.3g}, so their scale is the likely cause, not "
            "the learning rate; rescale the inputs (e.g. data.standardize = 'feature')."
        )
    if step == 0:
        return (
            f"{head}, before any update, so the learning rate is not the cause: the model's outputs are "
            f"not finite on inputs within |x| <= {peak:.3g}; check the model."
        )
    return (
        f"{head} with inputs within |x| <= {peak:.3g}, so the learning rate is the likely cause; lower "
        f"train.lr (now {lr:g})."
    )
