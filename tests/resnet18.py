"""ResNet-18 in the style of torchvision (He et al. 2016), for the eNTK tests.

A plain ``nn.Module`` built from ``torch.nn`` layers (``Conv2d`` without bias, ``BatchNorm2d``,
in-place ``ReLU``, ``MaxPool2d``, ``AdaptiveAvgPool2d``, ``Linear``), i.e. the kind of model the
eNTK must handle without ntklab's own layer classes. It has no infinite-width kernel map.

Layout, for width ``w`` (64 in torchvision) and inputs (N, C_in, H, W)::

    stem      imagenet: Conv7×7(w, stride 2, pad 3), BN, ReLU, MaxPool3×3(stride 2, pad 1)
              cifar:    Conv3×3(w, stride 1, pad 1), BN, ReLU
    layer1-4  2 BasicBlocks each, widths w, 2w, 4w, 8w, first strides 1, 2, 2, 2
    head      AdaptiveAvgPool(1), Linear(8w, num_classes)

BasicBlock: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` with a 1×1 conv + BN
shortcut when the shape changes. Initialization as torchvision: Kaiming normal (fan_out, ReLU)
convolutions, BN γ = 1, β = 0, PyTorch's default Linear init — all drawn from one seeded
generator, so the same seed gives the same network. BatchNorm mixes samples in training mode:
use ``model.eval()`` for the eNTK.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from ntklab.errors import ArchError

Stem = Literal["imagenet", "cifar"]


def _conv(c_in: int, c_out: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with BatchNorm and an identity (or 1×1 projection) shortcut."""

    expansion = 1

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv(c_in, c_out, 3, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv(c_out, c_out, 3)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(_conv(c_in, c_out, 1, stride), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """ResNet with BasicBlocks: (N, C_in, H, W) -> (N, num_classes)."""

    def __init__(
        self,
        blocks: tuple[int, int, int, int] = (2, 2, 2, 2),
        num_classes: int = 10,
        width: int = 64,
        in_channels: int = 3,
        stem: Stem = "imagenet",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if stem not in ("imagenet", "cifar"):
            raise ArchError(f"resnet stem must be 'imagenet' or 'cifar'; got {stem!r}.")
        if width < 1 or num_classes < 1:
            raise ArchError(f"resnet width and num_classes must be >= 1; got {width} and {num_classes}.")
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = _conv(in_channels, width, 3)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        stages = []
        c = width
        for i, n in enumerate(blocks):
            c_out = width * 2**i
            stride = 1 if i == 0 else 2
            stages.append(
                nn.Sequential(
                    *[BasicBlock(c if j == 0 else c_out, c_out, stride if j == 0 else 1) for j in range(n)]
                )
            )
            c = c_out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        self._init(seed)

    def _init(self, seed: int) -> None:
        gen = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=gen)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.Linear):
                    nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=gen)
                    bound = 1 / math.sqrt(m.in_features)
                    nn.init.uniform_(m.bias, -bound, bound, generator=gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(
    num_classes: int = 10, width: int = 64, in_channels: int = 3, stem: Stem = "imagenet", seed: int = 0
) -> ResNet:
    """ResNet-18 (torchvision layout at ``width=64``; 11.2 M parameters with 10 classes).

    ``width`` scales every stage (a small width such as 4 keeps tests fast); ``stem="cifar"``
    replaces the 7×7/stride-2 convolution and max-pool with a 3×3/stride-1 convolution for
    small images.

    Example
    -------
    >>> net = resnet18(num_classes=10, width=4).eval()
    >>> net(torch.randn(2, 3, 16, 16)).shape
    torch.Size([2, 10])
    """
    return ResNet((2, 2, 2, 2), num_classes, width, in_channels, stem, seed)
