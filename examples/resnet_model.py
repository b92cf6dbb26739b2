"""A small ResNet for 32×32 images, written the way a user would: plain PyTorch, no torchvision.

Hand it to ntklab as ``examples/resnet_model.py:make_model``; ntklab calls the factory once per
seed (under a seeded RNG) and passes ``num_outputs`` because the factory has a parameter of that
name. BatchNorm is fine: ntklab computes the eNTK of the model in eval mode (running statistics).

Example
-------
Does the NTK explain this ResNet on the CIFAR-10 subset, in ten minutes of CPU time::

    ntklab explain --model examples/resnet_model.py:make_model \\
        --data cifar10 --data-path path/to/cifar-10-batches-py \\
        --budget-minutes 10 --out runs/explain-resnet

or from Python::

    import ntklab
    from resnet_model import make_model
    ntklab.explain(make_model, "cifar10", data_path="/path/to/cifar-10-batches-py")
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the (projected) input, then ReLU (He et al. 2016)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, c_in, H, W) -> (B, c_out, H / stride, W / stride)."""
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem conv, three stages of ``blocks`` basic blocks (widths w, 2w, 4w; strides 1, 2, 2),
    global average pooling and a linear head: ResNet-(6·blocks + 2) of the CIFAR paper."""

    def __init__(self, num_outputs: int = 10, width: int = 16, blocks: int = 1, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        layers: list[nn.Module] = []
        c = width
        for stage, stride in enumerate((1, 2, 2)):
            c_out = width * 2**stage
            for b in range(blocks):
                layers.append(BasicBlock(c, c_out, stride if b == 0 else 1))
                c = c_out
        self.stages = nn.Sequential(*layers)
        self.head = nn.Linear(c, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, num_outputs)."""
        h = self.stages(self.stem(x))
        return self.head(h.mean((2, 3)))


def make_model(num_outputs: int = 10, width: int = 16, blocks: int = 1) -> nn.Module:
    """A fresh ResNet-8 (``blocks=1``) with ``num_outputs`` outputs; ntklab seeds the RNG."""
    return ResNet(num_outputs, width, blocks)
