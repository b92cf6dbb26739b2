"""Output modes of the empirical NTK (docs/design.md), defined once for every route.

For a model with C outputs, per-sample Jacobians J1 (n1, C, P) and J2 (n2, C, P) give the full
kernel Θ[a, b, c, d] = Σ_p J1[a, c, p] J2[b, d, p] (n1, n2, C, C). The modes reduce it to

* ``full``:      Θ                                     -> (n1, n2, C, C)
* ``trace``:     (1/C) Σ_c Θ[a, b, c, c]               -> (n1, n2)
* ``logit-sum``: Σ_c Σ_d Θ[a, b, c, d]                 -> (n1, n2)
* ``single``:    Θ[a, b, i, i], i = ``output_index``   -> (n1, n2)

Every route differentiates the C' cotangent rows of V (C', C) — one backward pass, VJP or
basis vector per row: the identity for ``full``/``trace`` (C' = C), ones for ``logit-sum`` and
the unit vector e_i for ``single`` (C' = 1). With Jacobian rows G = V J (b, C', P), every mode
but ``full`` is then ``weight · Σ_k Σ_p G1[a, k, p] G2[b, k, p]`` (``weight`` 1/C for
``trace``, else 1), and ``full`` keeps every pair (c, d).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ntklab.errors import ConfigError

MODES: tuple[str, ...] = ("full", "trace", "logit-sum", "single")


@dataclass(frozen=True)
class Mode:
    """One output mode for a model with ``n_outputs`` outputs (see the module docstring).

    Build it with :meth:`of`, which checks the mode and ``output_index``.
    """

    name: str
    n_outputs: int
    output_index: int | None = None

    @classmethod
    def of(cls, name: str, output_index: int | None, n_outputs: int) -> Mode:
        """The mode ``name``; ConfigError (one sentence) for an unknown mode or a bad index."""
        if name not in MODES:
            raise ConfigError(f"eNTK mode must be one of {', '.join(MODES)}; got {name!r}.")
        if name == "single" and (output_index is None or not 0 <= output_index < n_outputs):
            raise ConfigError(
                f"eNTK mode 'single' needs output_index in 0..{n_outputs - 1}; got {output_index!r}."
            )
        return cls(name, n_outputs, output_index if name == "single" else None)

    @property
    def full(self) -> bool:
        """Whether every output pair (c, d) is kept."""
        return self.name == "full"

    @property
    def n_cot(self) -> int:
        """C', the cotangent rows: C for ``full``/``trace``, 1 for ``logit-sum``/``single``."""
        return self.n_outputs if self.name in ("full", "trace") else 1

    @property
    def weight(self) -> float:
        """Factor on the sum over cotangent rows: 1/C for ``trace``, else 1."""
        return 1.0 / self.n_outputs if self.name == "trace" else 1.0

    @property
    def entries(self) -> int:
        """Output entries per pair of samples: C² for ``full``, else 1."""
        return self.n_outputs**2 if self.full else 1

    @property
    def pair_rows(self) -> int:
        """Products of Jacobian rows per pair of samples and parameter: C² for ``full``, else C'."""
        return self.n_outputs**2 if self.full else self.n_cot

    @property
    def infinite_scale(self) -> float:
        """What the mode makes of a kernel Θ₀ δ_cd (independent outputs, as the infinite NTK):
        Θ₀ times C for ``logit-sum``, times 1 for the other modes (``full`` per entry)."""
        return float(self.n_outputs) if self.name == "logit-sum" else 1.0

    def cotangents(self, like: torch.Tensor) -> torch.Tensor:
        """V (C', C) in ``like``'s dtype and device: I_C, a row of ones, or e_i."""
        kw = {"dtype": like.dtype, "device": like.device}
        if self.name == "logit-sum":
            return torch.ones(1, self.n_outputs, **kw)
        if self.name == "single":
            v = torch.zeros(1, self.n_outputs, **kw)
            v[0, self.output_index] = 1.0
            return v
        return torch.eye(self.n_outputs, **kw)

    def output_shape(self, n1: int, n2: int) -> tuple[int, ...]:
        """Shape of the kernel: (n1, n2, C, C) for ``full``, else (n1, n2)."""
        return (n1, n2, self.n_outputs, self.n_outputs) if self.full else (n1, n2)

    def contract(self, acc: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor) -> None:
        """Add the block of Jacobian rows G1 (b1, C', P), G2 (b2, C', P) to the float64 ``acc``.

        ``full``: acc[a, b, c, d] += Σ_p G1[a, c, p] G2[b, d, p]; else acc[a, b] += weight ·
        Σ_{k, p} G1[a, k, p] G2[b, k, p]. One matrix product in the rows' dtype.
        """
        b1, c, p = g1.shape
        b2 = g2.shape[0]
        if self.full:
            g = g1.reshape(b1 * c, p) @ g2.reshape(b2 * c, p).T
            acc.add_(g.view(b1, c, b2, c).permute(0, 2, 1, 3))
            return
        g = g1.reshape(b1, c * p) @ g2.reshape(b2, c * p).T
        acc.add_(g, alpha=self.weight)

    def reduce(self, k: torch.Tensor) -> torch.Tensor:
        """The mode's kernel (float64) from ``k`` (n1, n2, C', C), k[a, b, j, d] = Σ_c V[j, c]
        Θ[a, b, c, d]: the full kernel with its first output axis taken along the cotangents
        (for ``full``/``trace`` the full kernel itself).

        ``full``: k; ``trace``: Σ_c k[a, b, c, c] / C; ``logit-sum``: Σ_d k[a, b, 0, d];
        ``single``: k[a, b, 0, i].
        """
        if self.full:
            return k.double()
        if self.name == "trace":
            return torch.diagonal(k, dim1=2, dim2=3).sum(-1).double().div_(self.n_outputs)
        if self.name == "logit-sum":
            return k[:, :, 0, :].sum(-1).double()
        return k[:, :, 0, self.output_index].double()
