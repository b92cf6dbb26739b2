"""Architecture spec: parameterizations, padding, layer dictionaries, shape errors."""

from __future__ import annotations

import math

import pytest
import torch

from ntklab.arch import (
    AvgPool,
    Conv,
    Dense,
    Flatten,
    GlobalAvgPool,
    Relu,
    cnn1d,
    from_layers,
    mlp,
    myrtle,
    serial,
)
from ntklab.errors import ArchError


def test_ntk_and_standard_parameterizations_compute_the_same_function() -> None:
    x = torch.randn(5, 7)
    a = Dense(4, W_std=1.5, b_std=0.3, parameterization="ntk").module((7,), torch.Generator().manual_seed(0))
    b = Dense(4, W_std=1.5, b_std=0.3, parameterization="standard").module(
        (7,), torch.Generator().manual_seed(0)
    )
    # same raw draws, scaled into the parameters (standard) or the forward (ntk)
    torch.testing.assert_close(a(x), b(x))
    assert a.weight.std().item() == pytest.approx(1.0, abs=0.35)
    assert b.weight.std().item() == pytest.approx(1.5 / math.sqrt(7), abs=0.25)


def test_same_seed_same_network() -> None:
    spec = cnn1d(2, 8)
    m1, m2 = spec.module((1, 16), seed=3), spec.module((1, 16), seed=3)
    m3 = spec.module((1, 16), seed=4)
    x = torch.randn(2, 1, 16)
    assert torch.equal(m1(x), m2(x)) and not torch.equal(m1(x), m3(x))


@pytest.mark.parametrize(
    ("size", "k", "s", "lo_hi"), [(10, 3, 2, (0, 1)), (8, 3, 1, (1, 1)), (7, 4, 1, (1, 2))]
)
def test_same_padding_follows_xla(size: int, k: int, s: int, lo_hi: tuple[int, int]) -> None:
    conv = Conv(1, (k,), (s,), "SAME", b_std=None)
    m = conv.module((1, size), torch.Generator().manual_seed(0))
    assert m.pads == list(lo_hi)
    assert m(torch.randn(1, 1, size)).shape[-1] == math.ceil(size / s)


def test_zoo_shapes() -> None:
    assert mlp(2, 16).out_shape((1, 40)) == (10,)
    assert cnn1d(3, 16, out=1).out_shape((1, 40)) == (1,)
    assert myrtle(5, 8).out_shape((3, 32, 32)) == (10,)
    assert myrtle(10, 8).module((3, 32, 32))(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_layer_dicts_build_the_spec_and_defaults() -> None:
    spec = serial(
        Conv(4, (3, 3), (1, 1), "SAME", 1.4, 0.1), Relu(), AvgPool((2, 2)), GlobalAvgPool(), Dense(3)
    )
    layers = [
        {
            "layer": "Conv",
            "width": 4,
            "kernel_size": [3, 3],
            "stride": [1, 1],
            "padding": "SAME",
            "W_std": 1.4,
            "b_std": 0.1,
            "parameterization": "ntk",
        },
        {"layer": "Relu"},
        {"layer": "AvgPool", "window": [2, 2], "stride": [2, 2], "padding": "VALID"},
        {"layer": "GlobalAvgPool"},
        {"layer": "Dense", "width": 3, "W_std": 1.0, "b_std": 0.0, "parameterization": "ntk"},
    ]
    assert from_layers(layers) == spec
    d = from_layers([{"layer": "Dense", "width": 5}]).layers[0]
    assert (d.W_std, d.b_std, d.parameterization) == (1.0, 0.0, "ntk")


@pytest.mark.parametrize(
    ("layers", "shape", "words"),
    [
        ([{"layer": "Dense", "width": 4}], (1, 8), ["Dense", "(1, 8)", "Flatten"]),
        ([{"layer": "Dense", "width": -4}], (8,), ["width", "-4"]),
        ([{"layer": "Dence", "width": 4}], (8,), ["Dence", "did you mean 'Dense'"]),
        ([{"layer": "Conv", "width": 4, "kernel_size": [3, 3]}], (1, 8), ["Conv", "(C, H, W)", "(1, 8)"]),
        ([{"layer": "Dense", "width": 4, "W_sd": 1}], (8,), ["W_sd", "allowed"]),
        ([{"layer": "Flatten"}, {"layer": "GlobalAvgPool"}], (2, 4), ["GlobalAvgPool", "(8,)"]),
    ],
)
def test_bad_specs_give_one_sentence(layers: list, shape: tuple, words: list[str]) -> None:
    with pytest.raises(ArchError) as info:
        from_layers(layers).shapes(shape)
    msg = str(info.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_flatten_then_dense_matches_torch_order() -> None:
    spec = serial(Flatten(), Dense(3))
    m = spec.module((2, 5))
    x = torch.randn(4, 2, 5)
    torch.testing.assert_close(m(x), m[1](x.reshape(4, 10)))
