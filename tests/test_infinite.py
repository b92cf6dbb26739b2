"""Infinite-width NNGP/NTK (``ntklab.kernels.infinite``), each checked against an independent value.

* neural-tangents 0.6.5 reference values (``tests/data/reference``), tight;
* a brute-force recursion on explicit position-position matrices, whose window/stride/padding
  operators are probed from the torch modules themselves (strides, XLA SAME, VALID, pooling,
  Flatten, Erf, no-bias and ``standard`` layers the reference does not cover), tight;
* Monte Carlo means over random inits of wide finite networks (``standard`` parameterization,
  stated tolerances) and the eNTK's convergence to the NTK as width grows;
* tiled == untiled, symmetric == x2=x1; bad specs and shapes give one-sentence ArchErrors.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ntklab.arch import (
    AvgPool,
    Conv,
    Dense,
    Erf,
    Flatten,
    GlobalAvgPool,
    Identity,
    Layer,
    Relu,
    cnn1d,
    from_layers,
    mlp,
    myrtle,
    serial,
)
from ntklab.arch.core import Shape
from ntklab.errors import ArchError
from ntklab.kernels import empirical_ntk
from ntklab.kernels.infinite import input_state, kernel_fn, leading_flattens, propagate
from ntklab.kernels.precision import no_tf32

REFERENCE = Path(__file__).resolve().parent / "data" / "reference"
F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Run on one intra-op thread: these many small tensor ops gain little from a second
    thread, and on a shared 2-core machine OpenMP oversubscription made the file 5× slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rel_err(got: torch.Tensor | np.ndarray, want: torch.Tensor | np.ndarray) -> float:
    """max |got - want| / max |want|."""
    got, want = np.asarray(got), np.asarray(want)
    return float(np.abs(got - want).max() / np.abs(want).max())


# --------------------------------------------------------------------------- neural-tangents


@pytest.fixture(scope="module")
def reference() -> tuple[dict[str, np.ndarray], dict]:
    npz, meta = REFERENCE / "ntk_reference.npz", REFERENCE / "ntk_reference.json"
    if not (npz.is_file() and meta.is_file()):
        pytest.fail(f"reference kernels not found: expected {npz} and {meta} (tests/data/reference).")
    with np.load(npz) as data:
        arrays = {k: data[k] for k in data.files}
    return arrays, json.loads(meta.read_text())


def test_matches_neural_tangents_reference(reference) -> None:
    """Every kernel of the reference, x1×x2 and x1×x1, to ≤ 1e-6 relative error (float64)."""
    arrays, meta = reference
    assert meta["cases"], "the reference JSON lists no cases"
    checked = set()
    for case, info in meta["cases"].items():
        spec = from_layers(info["layers"])
        x1 = torch.from_numpy(arrays[f"{case}/x1_torch"])
        x2 = torch.from_numpy(arrays[f"{case}/x2_torch"])
        for tag, got in (("x1x2", kernel_fn(spec, x1, x2)), ("x1x1", kernel_fn(spec, x1))):
            for k in ("nngp", "ntk"):
                key = f"{case}/{k}_{tag}"
                err = rel_err(got[k], arrays[key])
                print(f"{key}: rel err {err:.2e}")
                assert got[k].dtype == F64 and got[k].shape == arrays[key].shape
                assert err <= 1e-6, f"{key}: relative error {err:.3e}"
                checked.add(key)
    kernels = {k for k in arrays if not k.split("/")[1].startswith("x")}
    assert kernels == checked, f"unchecked reference entries: {sorted(kernels - checked)}"


# --------------------------------------------------------------------------- brute force


def _probe(module: nn.Module, spatial: tuple[int, ...]) -> torch.Tensor:
    """The (P_out, P_in) matrix of a single-channel linear torch module, from basis images."""
    p = math.prod(spatial)
    with torch.no_grad():
        out = module(torch.eye(p, dtype=F64).reshape(p, 1, *spatial))
    return out.reshape(p, -1).T


def _brute_relu(k: torch.Tensor, l: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Arc-cosine kernel and its derivative kernel, as the reference JSON writes them."""
    cos = (k / torch.sqrt(l * r)).clamp(-1, 1)
    th = torch.arccos(cos)
    nngp = torch.sqrt(l * r) / (2 * math.pi) * (torch.sin(th) + (math.pi - th) * cos)
    return nngp, (math.pi - th) / (2 * math.pi)


def _brute_erf(k: torch.Tensor, l: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Arcsine kernel of erf and its derivative kernel, as the reference JSON writes them."""
    den = (1 + 2 * l) * (1 + 2 * r)
    return 2 / math.pi * torch.arcsin(2 * k / torch.sqrt(den)), 4 / math.pi / torch.sqrt(den - 4 * k**2)


def _brute_kernels(spec, x1: torch.Tensor, x2: torch.Tensor) -> dict[str, torch.Tensor]:
    """The neural-tangents recursions (reference JSON) on explicit (P, P) position matrices.

    Conv: ``A(K) = (1/k) Σ_d T_d K T_dᵀ`` with ``T_d`` probed from a one-hot-weight ConvModule;
    AvgPool: ``M K Mᵀ`` with ``M`` probed from the AvgPoolModule.
    """
    gen = torch.Generator().manual_seed(0)
    c, spatial = x1.shape[1], tuple(x1.shape[2:])
    a, b = x1.reshape(len(x1), c, -1), x2.reshape(len(x2), c, -1)
    k12 = torch.einsum("acp,bcq->abpq", a, b) / c
    k11 = torch.einsum("acp,acq->apq", a, a) / c
    k22 = torch.einsum("acp,acq->apq", b, b) / c
    t12 = torch.zeros_like(k12)
    width = c
    for layer in spec.layers:
        if isinstance(layer, (Conv, Dense)):
            if isinstance(layer, Conv):
                probe = Conv(1, layer.kernel_size, layer.stride, layer.padding, b_std=None)
                mod = probe.module((1, *spatial), gen).double()
                mod.w_scale = 1.0
                mats = []
                for d in itertools.product(*(range(k) for k in layer.kernel_size)):
                    w = torch.zeros_like(mod.weight)
                    w[(0, 0, *d)] = 1.0
                    mod.weight.data = w
                    mats.append(_probe(mod, spatial))
                spatial = probe.out_shape((1, *spatial))[1:]
            else:
                mats = [torch.eye(1, dtype=F64)]
            taps = len(mats)

            def lin(t: torch.Tensor, mats=mats) -> torch.Tensor:
                return sum(torch.einsum("qp,...pr,sr->...qs", m, t, m) for m in mats) / len(mats)

            w2, b2 = layer.W_std**2, (layer.b_std or 0.0) ** 2
            bias = 0.0 if layer.b_std is None else 1.0
            a12 = lin(k12)
            t_lin = lin(t12)
            k12n = w2 * a12 + b2
            if layer.parameterization == "ntk":
                t12 = k12n + w2 * t_lin
            else:
                t12 = width * taps * a12 + w2 * t_lin + bias
            k12, k11, k22 = k12n, w2 * lin(k11) + b2, w2 * lin(k22) + b2
            width = layer.width
        elif isinstance(layer, AvgPool):
            mod = layer.module((1, *spatial), gen)
            m = _probe(mod, spatial)
            k12, t12, k11, k22 = (torch.einsum("qp,...pr,sr->...qs", m, t, m) for t in (k12, t12, k11, k22))
            spatial = layer.out_shape((1, *spatial))[1:]
        elif isinstance(layer, (Relu, Erf)):
            v1 = torch.diagonal(k11, dim1=-2, dim2=-1)  # (n1, P)
            v2 = torch.diagonal(k22, dim1=-2, dim2=-1)

            pair = _brute_relu if isinstance(layer, Relu) else _brute_erf
            k12, dot = pair(k12, v1[:, None, :, None], v2[None, :, None, :])
            t12 = t12 * dot
            k11 = pair(k11, v1[:, :, None], v1[:, None, :])[0]
            k22 = pair(k22, v2[:, :, None], v2[:, None, :])[0]
        elif isinstance(layer, Identity):
            pass
        elif isinstance(layer, GlobalAvgPool):
            k12, t12, k11, k22 = (t.mean((-2, -1), keepdim=True) for t in (k12, t12, k11, k22))
            spatial = ()
        elif isinstance(layer, Flatten):
            width *= math.prod(spatial)
            k12, t12, k11, k22 = (
                torch.diagonal(t, dim1=-2, dim2=-1).mean(-1)[..., None, None] for t in (k12, t12, k11, k22)
            )
            spatial = ()
        else:  # pragma: no cover
            raise AssertionError(layer)
    return {"nngp": k12[..., 0, 0], "ntk": t12[..., 0, 0]}


def _spec_1d(param: str):
    # L=10, stride 2 SAME: pads (0, 1); AvgPool(2, 2, SAME) on 5: pads (0, 1); VALID conv, no bias.
    return serial(
        Conv(3, (3,), (2,), "SAME", 1.3, 0.2, param),
        Erf(),
        AvgPool((2,), (2,), "SAME"),
        Conv(4, (2,), (1,), "VALID", 1.1, None, param),
        Relu(),
        Identity(),
        Flatten(),
        Dense(2, 0.8, 0.0, param),
    )


def _spec_2d(param: str):
    return serial(
        Conv(3, (3, 2), (2, 1), "SAME", 1.4, 0.1, param),
        Relu(),
        AvgPool((3, 3), (2, 2), "SAME"),
        Conv(5, (2, 2), (1, 2), "VALID", 1.2, 0.0, param),
        Relu(),
        GlobalAvgPool(),
        Dense(1, 1.0, 0.3, param),
    )


@pytest.mark.parametrize("param", ["ntk", "standard"])
@pytest.mark.parametrize("case", ["1d", "2d"])
def test_matches_brute_force_position_matrices(case: str, param: str) -> None:
    """Strided/asymmetric SAME and VALID conv, SAME pooling, Flatten, GAP, Erf, both params."""
    g = torch.Generator().manual_seed(3)
    spec, shape = (_spec_1d(param), (2, 10)) if case == "1d" else (_spec_2d(param), (2, 7, 6))
    x1 = torch.randn(3, *shape, generator=g, dtype=F64)
    x2 = torch.randn(4, *shape, generator=g, dtype=F64)
    got, want = kernel_fn(spec, x1, x2), _brute_kernels(spec, x1, x2)
    for k in ("nngp", "ntk"):
        assert rel_err(got[k], want[k]) < 1e-12, (k, rel_err(got[k], want[k]))
    sym = kernel_fn(spec, x1)
    want11 = _brute_kernels(spec, x1, x1)
    for k in ("nngp", "ntk"):
        assert rel_err(sym[k], want11[k]) < 1e-7, (k, rel_err(sym[k], want11[k]))


# --------------------------------------------------------------------------- tiling, symmetry


@pytest.mark.parametrize("param", ["ntk", "standard"])
def test_tiled_equals_untiled_and_symmetric_equals_x2_is_x1(param: str) -> None:
    g = torch.Generator().manual_seed(4)
    spec = _spec_2d(param)
    x1 = torch.randn(7, 2, 7, 6, generator=g, dtype=F64)
    x2 = torch.randn(5, 2, 7, 6, generator=g, dtype=F64)
    whole = kernel_fn(spec, x1, x2, tile=(7, 5))
    tiny = kernel_fn(spec, x1, x2, memory_budget_bytes=1, progress=False)  # one pair per tile
    odd = kernel_fn(spec, x1, x2, tile=(3, 2), progress=False)
    for k in ("nngp", "ntk"):
        torch.testing.assert_close(tiny[k], whole[k], rtol=1e-13, atol=0)
        torch.testing.assert_close(odd[k], whole[k], rtol=1e-13, atol=0)
    sym_whole = kernel_fn(spec, x1, tile=7)
    sym_tiled = kernel_fn(spec, x1, tile=2, get="ntk", progress=False)
    explicit = kernel_fn(spec, x1, x1.clone())
    assert set(sym_tiled) == {"ntk"}
    assert torch.equal(sym_whole["ntk"], sym_whole["ntk"].T)
    torch.testing.assert_close(sym_tiled["ntk"], sym_whole["ntk"], rtol=1e-13, atol=0)
    for k in ("nngp", "ntk"):
        # Off the diagonal the two paths agree to rounding; on it, ReLU's t = arccos(cos) turns
        # a 1e-16 wobble of cos = 1 into 1e-8 (the symmetric path makes cos exactly 1).
        torch.testing.assert_close(explicit[k], sym_whole[k], rtol=1e-7, atol=0)


# --------------------------------------------------------------------------- Monte Carlo


def _mean_and_se(samples: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    stacked = torch.stack(samples)
    return stacked.mean(0), stacked.std(0) / len(samples) ** 0.5


def _standard_spec(case: str, width: int, out: int):
    if case == "mlp":
        return mlp(1, width, out=out, W_std=1.3, b_std=0.2, parameterization="standard")
    # strided SAME conv (pads (0, 1)), Erf, SAME pooling, Flatten: readout fan-in = width · 3
    return serial(
        Conv(width, (3,), (2,), "SAME", 1.3, 0.2, "standard"),
        Erf(),
        AvgPool((2,), (2,), "SAME"),
        Flatten(),
        Dense(out, 0.9, 0.0, "standard"),
    )


@pytest.mark.parametrize("case", ["mlp", "conv"])
def test_standard_parameterization_matches_monte_carlo(case: str) -> None:
    """Mean eNTK and output covariance of random ``standard`` networks vs the infinite kernels.

    One hidden nonlinearity, so the first layer's outputs are exactly Gaussian and both
    expectations equal the infinite kernels at *this* width (the ``standard`` NTK uses the
    finite fan-ins: input width, conv fan-in C·k, hidden width, width × positions after
    Flatten). NTK: eNTK (trace over 4 outputs) of 32 width-512 inits; NNGP: E[f_c(x) f_c(x')]
    over 256 outputs × 100 width-256 inits. Tolerance: relative Frobenius error ≤ 4% (about
    3 standard errors) and every entry within 4.5 standard errors.
    """
    g = torch.Generator().manual_seed(5)
    x = (
        torch.randn(5, 7, generator=g, dtype=F64)
        if case == "mlp"
        else torch.randn(5, 2, 10, generator=g, dtype=F64)
    )
    shape = tuple(x.shape[1:])
    ntk_spec, nngp_spec = _standard_spec(case, 512, 4), _standard_spec(case, 256, 256)
    inf = {
        "ntk": kernel_fn(ntk_spec, x, get="ntk")["ntk"],
        "nngp": kernel_fn(nngp_spec, x, get="nngp")["nngp"],
    }
    ntks = [
        empirical_ntk(ntk_spec.module(shape, seed=s).double(), x, mode="trace", progress=False)
        for s in range(32)
    ]
    covs = []
    with torch.no_grad():
        for s in range(100):
            out = nngp_spec.module(shape, seed=1000 + s).double()(x)  # (n, 256)
            covs.append(out @ out.T / out.shape[1])
    for name, samples in (("ntk", ntks), ("nngp", covs)):
        mean, se = _mean_and_se(samples)
        want = inf[name]
        rel = ((mean - want).norm() / want.norm()).item()
        z = ((mean - want).abs() / se).max().item()
        print(
            f"{case} {name}: Monte Carlo rel. Frobenius error {rel:.4f} (s.e. {(se.norm() / want.norm()).item():.4f}), max |z| {z:.2f}"
        )
        assert rel <= 0.04 and z <= 4.5, (name, rel, z)


@pytest.mark.parametrize("case", ["mlp", "cnn1d"])
def test_entk_converges_to_infinite_ntk_with_width(case: str) -> None:
    """‖K_e − K_∞‖_F / ‖K_∞‖_F, mean over seeds 0-2, falls ≥ 3× from width 64 to 1024 (≈ 4×
    expected from the 1/√width fluctuations).

    cnn1d uses kernel_size 5: with 1 input channel and kernel_size 3 the first layer's fan-in
    is 3, whose heavy-tailed per-channel weight norms make a 3-seed mean too noisy (measured
    ratios for disjoint seed triples 1.1-5.9; with 5: 3.4-6.4).
    """
    g = torch.Generator().manual_seed(0)
    if case == "mlp":
        make, x = (lambda w: mlp(2, w, out=1)), torch.randn(8, 12, generator=g, dtype=F64)
    else:
        make, x = (lambda w: cnn1d(2, w, out=1, kernel_size=5)), torch.randn(8, 1, 16, generator=g, dtype=F64)
    k_inf = kernel_fn(make(1), x, get="ntk")["ntk"]
    err = {}
    for width in (64, 1024):
        errs = []
        for seed in range(3):
            model = make(width).module(tuple(x.shape[1:]), seed=seed).double()
            k_e = empirical_ntk(model, x, mode="trace", progress=False)
            errs.append(((k_e - k_inf).norm() / k_inf.norm()).item())
        err[width] = sum(errs) / len(errs)
    ratio = err[64] / err[1024]
    print(f"{case}: rel. error width 64 {err[64]:.4f}, width 1024 {err[1024]:.4f}, ratio {ratio:.2f}")
    assert ratio >= 3.0, err


# --------------------------------------------------------------------------- errors, precision


@dataclass(frozen=True)
class NoKernel(Layer):
    """A shape-preserving layer without an infinite-width kernel map."""

    name = "NoKernel"

    def out_shape(self, in_shape: Shape) -> Shape:
        return in_shape

    def module(self, in_shape: Shape, generator: torch.Generator) -> nn.Module:
        return nn.Identity()


def _one_sentence(err: pytest.ExceptionInfo, *words: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg and msg.endswith("."), msg
    for w in words:
        assert w in msg, (w, msg)


def test_bad_specs_and_shapes_raise_one_sentence() -> None:
    x = torch.randn(3, 4, dtype=F64)
    with pytest.raises(ArchError) as err:
        kernel_fn(serial(Dense(8), NoKernel(), Dense(1)), x)
    _one_sentence(err, "layer 1", "NoKernel", "(8,)", "kernel map")
    with pytest.raises(ArchError) as err:
        kernel_fn(cnn1d(2, 8), torch.randn(3, 1, 4, 4))
    _one_sentence(err, "layer 0", "Conv", "(1, 4, 4)")
    with pytest.raises(ArchError) as err:
        kernel_fn(serial(Conv(4, (3,)), Relu()), torch.randn(3, 1, 8))
    _one_sentence(err, "layer 1", "Relu", "(4, 8)", "flat")
    with pytest.raises(ArchError) as err:
        kernel_fn(mlp(1, 8), x, torch.randn(2, 5))
    _one_sentence(err, "(4,)", "(5,)")
    with pytest.raises(ValueError):
        kernel_fn(mlp(1, 8), x, get=("nngp", "cov"))


@dataclass(frozen=True)
class RecordPrecision(Layer):
    """Identity layer whose kernel map records the TF32 flags it runs under."""

    seen: list
    name = "RecordPrecision"

    def out_shape(self, in_shape: Shape) -> Shape:
        return in_shape

    def module(self, in_shape: Shape, generator: torch.Generator) -> nn.Module:
        return nn.Identity()

    def kernel_map(self, state):
        self.seen.append(
            (
                torch.backends.cuda.matmul.allow_tf32,
                torch.backends.cudnn.allow_tf32,
                torch.get_float32_matmul_precision(),
            )
        )
        return state.replace(var1=None, var2=None)


def test_kernels_run_without_tf32_and_flags_are_restored() -> None:
    before = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
    )
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    try:
        seen: list = []
        kernel_fn(
            serial(Dense(4), RecordPrecision(seen), Relu(), Dense(1)),
            torch.randn(3, 2),
            tile=1,
            progress=False,
        )
        assert seen and all(s == (False, False, "highest") for s in seen), seen
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        with no_tf32():
            assert not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before[:2]
        torch.set_float32_matmul_precision(before[2])


def test_float32_inputs_give_float64_kernels_and_zoo_runs() -> None:
    x = torch.randn(3, 3, 8, 8)  # float32, as a data loader gives
    k = kernel_fn(myrtle(5, 16), x)
    k64 = kernel_fn(myrtle(5, 16), x.double())
    assert k["ntk"].dtype == F64 and k["ntk"].shape == (3, 3)
    torch.testing.assert_close(k["ntk"], k64["ntk"], rtol=0, atol=0)
    k32 = kernel_fn(myrtle(5, 16), x, dtype=torch.float32)
    torch.testing.assert_close(k32["ntk"], k64["ntk"], rtol=1e-4, atol=0)
    via_spec = myrtle(5, 16).kernel_fn(x, get="nngp")
    assert set(via_spec) == {"nngp"} and torch.equal(via_spec["nngp"], k["nngp"])


def test_leading_flatten_skips_position_pairs_and_keeps_the_kernels() -> None:
    """An MLP on (n, C, L) inputs starts with Flatten; kernel_fn flattens the inputs up front
    (no (L, L) arrays per pair) and must give the plain recursion's kernels: to rounding off the
    diagonal, to arccos-amplified rounding on it (1e-16 in cos -> 1e-8, see above)."""
    g = torch.Generator().manual_seed(9)
    spec = mlp(2, 16, out=3)
    x1 = torch.randn(9, 2, 5, generator=g, dtype=F64)
    x2 = torch.randn(4, 2, 5, generator=g, dtype=F64)
    assert leading_flattens(spec) == 1 and leading_flattens(cnn1d(1, 4, out=2)) == 0
    shapes = spec.kernel_shapes(x1.shape[1:])
    for a, b in ((x1, None), (x2, x1)):
        fast = kernel_fn(spec, a, b)
        plain = propagate(spec, input_state(a, b), shapes)  # (5, 5) position pairs at layer 0
        for k in ("nngp", "ntk"):
            torch.testing.assert_close(fast[k], getattr(plain, k), rtol=1e-7, atol=0)
            off = ~torch.eye(*fast[k].shape, dtype=torch.bool) if b is None else slice(None)
            torch.testing.assert_close(fast[k][off], getattr(plain, k)[off], rtol=1e-12, atol=0)
