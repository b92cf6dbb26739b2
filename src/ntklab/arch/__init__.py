"""Architecture specs: one definition gives the network, its eNTK and its infinite NTK."""

from ntklab.arch.core import Layer, Spec, serial
from ntklab.arch.dicts import from_layers, layer_from_dict
from ntklab.arch.elementwise import Erf, Identity, Relu
from ntklab.arch.linear import Conv, Dense
from ntklab.arch.pooling import AvgPool, Flatten, GlobalAvgPool
from ntklab.arch.zoo import ZOO, cnn1d, mlp, myrtle

__all__ = [
    "ZOO",
    "AvgPool",
    "Conv",
    "Dense",
    "Erf",
    "Flatten",
    "GlobalAvgPool",
    "Identity",
    "Layer",
    "Relu",
    "Spec",
    "cnn1d",
    "from_layers",
    "layer_from_dict",
    "mlp",
    "myrtle",
    "serial",
]
