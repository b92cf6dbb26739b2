"""The finite-time linearized predictor against a wide network trained in the lazy regime."""

from __future__ import annotations

import numpy as np
import torch

from ntklab.arch import ZOO
from ntklab.config import TrainConfig
from ntklab.kernels import empirical_ntk
from ntklab.linearized import linearized_predict
from ntklab.train import train


def _data(seed: int, n: int, m: int, d: int = 8) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + m, d, generator=g)
    x = x / x.norm(dim=1, keepdim=True) * d**0.5
    y = torch.sin(x[:, :1] * 1.5) + 0.5 * x[:, 1:2]
    return x[:n], y[:n], x[n:], y[n:]


def test_wide_network_follows_the_linearized_predictor() -> None:
    """One hidden layer of width 4096, ntk parameterization, full-batch GD with a small lr:
    the network's learned test predictions f_t − f0 match the linearized ones within 5 %."""
    n, m, lr, steps = 32, 24, 0.5, 150
    x, y, xt, _ = _data(0, n, m)
    model = ZOO["mlp"](1, 4096, out=1, W_std=1.5, b_std=0.1, parameterization="ntk").module((8,), seed=3)
    with torch.no_grad():
        f0_train, f0_test = model(x).double().numpy(), model(xt).double().numpy()
    k_train = empirical_ntk(model, x, None, mode="single", output_index=0).numpy()
    k_cross = empirical_ntk(model, xt, x, mode="single", output_index=0).numpy()
    cfg = TrainConfig(
        optimizer="sgd",
        lr=lr,
        momentum=0.0,
        batch_size=n,
        steps=steps,
        schedule="constant",
        center_output=False,
    )
    res = train(model, x, y, torch.zeros(n, dtype=torch.long), cfg, seed=0)
    with torch.no_grad():
        learned_net = res.model(xt).double().numpy() - f0_test
    lin = linearized_predict(k_train, k_cross, y.double().numpy(), f0_train, f0_test, lr=lr, steps=steps)
    learned_lin = lin - f0_test
    rel = np.linalg.norm(learned_net - learned_lin) / np.linalg.norm(learned_lin)
    assert rel < 0.05, rel
    # and it is not trivially small: training moved the predictions a lot
    assert (
        np.linalg.norm(learned_lin) > 0.3 * np.linalg.norm(f0_test + 1e-12) or np.linalg.norm(learned_lin) > 1
    )


def test_linearized_predictor_limits() -> None:
    """t = 0 gives f0; t → ∞ gives ridgeless kernel regression from f0; it interpolates."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((12, 5))
    k = a @ a.T + 0.1 * np.eye(12)
    kc = rng.standard_normal((4, 5)) @ a.T
    y, f0, f0c = rng.standard_normal((12, 2)), rng.standard_normal((12, 2)), rng.standard_normal((4, 2))
    np.testing.assert_allclose(linearized_predict(k, kc, y, f0, f0c, lr=0.1, steps=0), f0c)
    far = linearized_predict(k, kc, y, f0, f0c, lr=0.1, steps=1e9)
    np.testing.assert_allclose(far, f0c + kc @ np.linalg.solve(k, y - f0), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(linearized_predict(k, k, y, f0, f0, lr=0.1, steps=1e9), y, atol=1e-8)
