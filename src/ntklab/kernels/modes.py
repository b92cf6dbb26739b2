"""Output modes of the empirical NTK (docs/design.md) as contractions of Jacobian blocks.

Given Jacobian blocks J1 (b1, C, p) and J2 (b2, C, p) of the outputs with respect to one
chunk of p parameters, the eNTK contribution of that chunk is

* ``full``:      Θ[a, b, c, d] = Σ_p J1[a, c, p] J2[b, d, p]            -> (b1, b2, C, C)
* ``trace``:     Θ[a, b] = (1/C) Σ_c Σ_p J1[a, c, p] J2[b, c, p]       -> (b1, b2)
* ``logit-sum``: Θ[a, b] = Σ_p (Σ_c J1[a, c, p]) (Σ_d J2[b, d, p])      -> (b1, b2)
* ``single``:    Θ[a, b] = Σ_p J1[a, i, p] J2[b, i, p] for one index i  -> (b1, b2)

Summing the contributions of all parameter chunks gives Θ(x, x') = Σ_p ∂f(x)/∂θ_p ∂f(x')/∂θ_p.
"""

from __future__ import annotations

from typing import Literal

from ntklab.errors import ConfigError

Mode = Literal["full", "trace", "logit-sum", "single"]
MODES: tuple[str, ...] = ("full", "trace", "logit-sum", "single")


def check_mode(mode: str, output_index: int | None, n_outputs: int) -> None:
    """Raise a one-sentence error for an unknown mode or a bad ``output_index``."""
    if mode not in MODES:
        raise ConfigError(f"eNTK mode must be one of {', '.join(MODES)}; got {mode!r}.")
    if mode == "single":
        if output_index is None or not 0 <= output_index < n_outputs:
            raise ConfigError(
                f"eNTK mode 'single' needs output_index in 0..{n_outputs - 1}; got {output_index!r}."
            )


def output_shape(n1: int, n2: int, mode: str, n_outputs: int) -> tuple[int, ...]:
    """Shape of the full kernel: (n1, n2) or (n1, n2, C, C) for ``full``."""
    return (n1, n2, n_outputs, n_outputs) if mode == "full" else (n1, n2)
