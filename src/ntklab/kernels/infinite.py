"""Infinite-width NNGP and NTK of an architecture spec, tiled under a memory budget.

The recursions are neural-tangents' (``stax``, v0.6.5; Novak et al. 2020, arXiv:1912.02803)
for both the ``ntk`` and the ``standard`` parameterization (docs/design.md). Each layer's map
lives beside its module in :mod:`ntklab.arch` (``Layer.kernel_map``, on a
:class:`~ntklab.kernels.state.KernelState`); this module composes them for any spec that
follows :class:`KernelSpec` and never imports ``ntklab.arch``.

How :func:`kernel_fn` computes, for inputs ``x1`` (n1, C, *S) and ``x2`` (n2, C, *S):

1. *Self pass*: for every input alone, the self covariance ``(n, *S, *S)`` is propagated
   through all layers and its diagonal (the per-position variances, ``(n, *S_l)`` at every
   layer ``l``) is kept. This is the batch-diagonal of the full kernel, cost ``O(n · P²)``.
2. *Cross pass*: per tile of input pairs, the ``(t1, t2, *S, *S)`` NNGP/NTK arrays are
   propagated, the nonlinearities reading the cached variances (exact: a pointwise map at
   positions ``(p, p')`` needs only ``K(x, x)[p, p]``, ``K(x', x')[p', p']`` and
   ``K(x, x')[p, p']``). Cost ``O(n1 · n2 · P²)`` per layer, ``P = prod(S)``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Protocol

import torch

from ntklab.errors import ArchError
from ntklab.kernels.precision import no_tf32
from ntklab.kernels.state import KernelState
from ntklab.progress import progress_bar

GETS = ("nngp", "ntk")
# Live (pair-sized) arrays during one layer map, relative to one NNGP array: input NNGP and
# NTK, their outputs and the nonlinearities' temporaries.
LIVE_ARRAYS = 8
# On CPU one position-pair array of a tile is kept at or below this size (see tile_shape).
CPU_ARRAY_BYTES = 2 * 2**20


class KernelLayer(Protocol):
    """A layer with an infinite-width kernel map (``ntklab.arch`` layers)."""

    name: str

    def kernel_map(self, state: KernelState) -> KernelState: ...


class KernelSpec(Protocol):
    """A serial architecture whose kernels :func:`kernel_fn` composes (``ntklab.arch.Spec``)."""

    @property
    def layers(self) -> Sequence[KernelLayer]: ...

    def kernel_shapes(self, input_shape: Sequence[int]) -> list[tuple[int, ...]]:
        """Input shape of every layer and the output shape; ArchError when a layer has no
        kernel map or the output is not flat."""
        ...


def _flat(x: torch.Tensor) -> torch.Tensor:
    """(n, C, *S) -> (n, C, P); (n, D) -> (n, D, 1)."""
    return x.reshape(x.shape[0], x.shape[1], -1)


def input_state(
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    *,
    ntk: bool = True,
    cross: bool = True,
    covs: bool = True,
) -> KernelState:
    """The kernels of the inputs (layer 0), neural-tangents' convention.

    ``NNGP_0[a, b, p, p'] = Σ_c x1[a, c, p] · x2[b, c, p'] / C`` (torch layout (n, C, *S); for
    vectors (n, D): ``x1[a] · x2[b] / D``) and ``NTK_0 = 0`` (a 0-dim zero).

    Parameters
    ----------
    x1, x2 : Tensor
        (n1, C, *S) and (n2, C, *S), or (n, D); ``x2=None`` means ``x1``.
    ntk : bool
        Track the NTK (else ``ntk=None``).
    cross : bool
        Compute the cross NNGP ``(n1, n2, *S, *S)`` (else ``nngp=None``).
    covs : bool
        Compute the self covariances ``cov1`` (n1, *S, *S) and ``cov2`` (n2, *S, *S).

    Returns
    -------
    KernelState
        In the dtype and on the device of ``x1``.
    """
    x2 = x1 if x2 is None else x2
    spatial = tuple(x1.shape[2:])
    width = int(x1.shape[1])
    a, b = _flat(x1), _flat(x2)
    nngp = cov1 = cov2 = None
    if cross:
        # (n1, P, C) @ (C, n2·P) -> (n1, P, n2, P) -> (n1, n2, P, P)
        prod = a.transpose(1, 2).reshape(-1, width) @ b.permute(1, 0, 2).reshape(width, -1)
        prod = prod.reshape(a.shape[0], a.shape[2], b.shape[0], b.shape[2]).permute(0, 2, 1, 3)
        nngp = (prod / width).reshape(a.shape[0], b.shape[0], *spatial, *spatial)
    if covs or (cross and x2 is x1):
        cov1 = (torch.einsum("acp,acq->apq", a, a) / width).reshape(a.shape[0], *spatial, *spatial)
        cov2 = (
            cov1
            if x2 is x1
            else (torch.einsum("acp,acq->apq", b, b) / width).reshape(b.shape[0], *spatial, *spatial)
        )
        if cross and x2 is x1:
            # Same numbers on the batch diagonal as the self covariances: every later map is
            # elementwise, so K(x, x)[p, p] == var(x)[p] bit for bit and ReLU's cos t is 1.
            idx = torch.arange(a.shape[0], device=a.device)
            nngp[idx, idx] = cov1
        if not covs:
            cov1 = cov2 = None
    zero = torch.zeros((), dtype=x1.dtype, device=x1.device) if ntk else None
    return KernelState(nngp=nngp, ntk=zero, cov1=cov1, cov2=cov2, spatial=spatial, width=width)


def _apply(layer: KernelLayer, index: int, shape: tuple[int, ...], state: KernelState) -> KernelState:
    """``layer.kernel_map(state)`` with errors naming the layer and its input shape."""
    try:
        return layer.kernel_map(state)
    except ArchError as err:
        raise ArchError(f"layer {index} ({layer.name}) on input shape {shape}: {err}") from None
    except NotImplementedError:
        raise ArchError(
            f"layer {index} ({layer.name}) on input shape {shape} has no infinite-width kernel map."
        ) from None


def propagate(
    spec: KernelSpec,
    state: KernelState,
    shapes: Sequence[tuple[int, ...]] | None = None,
    first: int = 0,
) -> KernelState:
    """Apply the kernel maps of layers ``first, first + 1, ...`` in order (``stax.serial``): the
    plain, uncached recursion.

    ``state`` must carry ``cov1``/``cov2`` (as :func:`input_state` gives) for the
    nonlinearities; ``shapes`` (from ``spec.kernel_shapes``) only improves error messages.
    """
    for i, layer in enumerate(spec.layers[first:], first):
        shape = shapes[i] if shapes is not None else (state.width, *state.spatial)
        state = _apply(layer, i, shape, state)
    return state


def leading_flattens(spec: KernelSpec) -> int:
    """How many layers at the start of ``spec`` are ``Flatten``.

    Flattening the inputs first gives the same kernels bit for bit in exact arithmetic
    (``x1 · x2 / (C·P)`` is the mean over positions of ``Σ_c x1[c, p] x2[c, p] / C``) without
    the (P, P) position-pair arrays of the input layer: an MLP on (1, 40) inputs computes 1
    entry per input pair instead of 1,600.
    """
    k = 0
    while k < len(spec.layers) and spec.layers[k].name == "Flatten":
        k += 1
    return k


def _variance_cache(
    spec: KernelSpec, x: torch.Tensor, shapes: list[tuple[int, ...]], chunk: int, first: int = 0
) -> list[torch.Tensor]:
    """Per-position variances at the input of every layer from ``first`` on, ``[(n, *S_l) for
    l]`` (entries before ``first`` are empty placeholders).

    The outputs are allocated up front: small long-lived tensors allocated between the
    multi-MiB temporaries fragment the CPU heap (the resident set grew by ~25 MB per input
    for 3×32×32 images before).
    """
    n = x.shape[0]
    per_layer = [x.new_empty((n, *shape[1:]) if i >= first else (0,)) for i, shape in enumerate(shapes[:-1])]
    for start in range(0, n, chunk):
        state = input_state(x[start : start + chunk], None, ntk=False, cross=False)
        state = state.replace(cov2=None)
        for i, layer in enumerate(spec.layers[first:], first):
            per_layer[i][start : start + chunk] = state.self_variance()[0]
            state = _apply(layer, i, shapes[i], state)
    return per_layer


def _pair_bytes(shapes: Sequence[tuple[int, ...]], itemsize: int) -> int:
    """Bytes of one input pair's position-pair array at the widest layer: ``max_l P_l² · itemsize``."""
    return max(math.prod(s[1:]) if len(s) > 1 else 1 for s in shapes) ** 2 * itemsize


def _pairs_in_budget(
    shapes: Sequence[tuple[int, ...]], itemsize: int, memory_budget_bytes: int, array_bytes: int | None = None
) -> int:
    """Input pairs whose ``LIVE_ARRAYS`` position-pair arrays (widest layer) fit the budget,
    and whose single array fits ``array_bytes`` (if given)."""
    per_pair = _pair_bytes(shapes, itemsize)
    pairs = memory_budget_bytes // (LIVE_ARRAYS * per_pair)
    if array_bytes is not None:
        pairs = min(pairs, array_bytes // per_pair)
    return max(1, int(pairs))


def tile_shape(
    n1: int,
    n2: int,
    shapes: Sequence[tuple[int, ...]],
    itemsize: int,
    memory_budget_bytes: int,
    array_bytes: int | None = None,
) -> tuple[int, int]:
    """Rows and columns of a tile of input pairs whose position-pair arrays fit the budget.

    One pair holds ``LIVE_ARRAYS`` arrays of ``max_l prod(S_l)²`` entries at the widest layer;
    ``array_bytes`` further caps one such array (on CPU, ``CPU_ARRAY_BYTES``: arrays that stay
    in cache and in the allocator's heap run the memory-bound maps several times faster).
    """
    pairs = _pairs_in_budget(shapes, itemsize, memory_budget_bytes, array_bytes)
    t1 = max(1, min(n1, math.isqrt(pairs)))
    t2 = max(1, min(n2, pairs // t1))
    if t2 == n2:
        t1 = max(1, min(n1, pairs // t2))
    return t1, t2


def _show_progress(progress: bool | None, n_tiles: int) -> bool:
    if progress is None:
        return n_tiles > 1 and (sys.stderr.isatty() or n_tiles > 4)
    return bool(progress) and n_tiles > 1


def kernel_fn(
    spec: KernelSpec,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    get: str | Sequence[str] = GETS,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
    tile: int | tuple[int, int] | None = None,
    memory_budget_bytes: int = 2**30,
    progress: bool | None = None,
) -> dict[str, torch.Tensor]:
    """Infinite-width NNGP and NTK of ``spec`` between ``x1`` and ``x2``.

    The recursion of neural-tangents' ``stax`` ``kernel_fn(x1, x2, get)`` for every layer of
    the spec, in the layer's parameterization (``ntk`` or ``standard``, docs/design.md). A readout
    with k outputs has the same kernel for every output, so kernels are (n1, n2).

    Parameters
    ----------
    spec : KernelSpec
        The architecture; every layer needs a kernel map and the output must be flat (C,).
    x1 : Tensor, (n1, *input_shape)
        Inputs in torch layout, as for ``spec.module(input_shape)``: (n, D), (n, C, L),
        (n, C, H, W).
    x2 : Tensor, (n2, *input_shape), optional
        ``None`` means ``x1``; then only tiles ``i <= j`` are computed and mirrored, and the
        result is exactly symmetric.
    get : "nngp", "ntk" or a sequence of them
        Kernels to return (the NTK costs about as much again as the NNGP).
    device : torch.device or str, optional
        Where to compute; default the device of ``x1``. Results stay there.
    dtype : torch.dtype
        Computation dtype, default float64 (float32 only for speed comparisons); results are
        float64 either way.
    tile : int or (int, int), optional
        Input pairs per tile (rows, columns); default from ``memory_budget_bytes``. With
        ``x2=None`` the row count is used for both.
    memory_budget_bytes : int
        Bound on the position-pair arrays held at once (``(t1, t2, *S, *S)`` per array: for
        32×32 images that is 8 MiB per input pair in float64).
    progress : bool, optional
        tqdm bar over tiles; ``None`` shows it when there is more than one tile and stderr is a
        terminal or there are more than 4 tiles.

    Returns
    -------
    dict of str to Tensor
        ``{"nngp": (n1, n2), "ntk": (n1, n2)}`` (the keys asked for), float64, on ``device``.

    Raises
    ------
    ArchError
        The input shape does not fit the spec, a layer has no kernel map, or the output is not
        a flat vector (one sentence naming the layer and shape).

    Examples
    --------
    >>> from ntklab.arch import mlp
    >>> k = kernel_fn(mlp(2, 64, out=1), torch.randn(5, 3), get="ntk")
    >>> k["ntk"].shape, k["ntk"].dtype
    (torch.Size([5, 5]), torch.float64)
    """
    keys = (get,) if isinstance(get, str) else tuple(get)
    if not keys or any(k not in GETS for k in keys):
        raise ValueError(f"get must be 'nngp', 'ntk' or a sequence of them; got {get!r}.")
    x1 = torch.as_tensor(x1)
    sym = x2 is None
    x2 = x1 if sym else torch.as_tensor(x2)
    if x1.ndim < 2 or x2.ndim < 2:
        raise ArchError(
            f"inputs must be batches (n, ...) of at least 2 dims; got shapes {tuple(x1.shape)} and {tuple(x2.shape)}."
        )
    if x1.shape[1:] != x2.shape[1:]:
        raise ArchError(
            f"x1 and x2 must have the same per-example shape; got {tuple(x1.shape[1:])} and {tuple(x2.shape[1:])}."
        )
    shapes = spec.kernel_shapes(x1.shape[1:])
    first = leading_flattens(spec)  # inputs flattened up front: no (P, P) arrays for them
    device = torch.device(device) if device is not None else x1.device
    x1 = (x1.flatten(1) if first else x1).to(device=device, dtype=dtype)
    x2 = x1 if sym else (x2.flatten(1) if first else x2).to(device=device, dtype=dtype)
    shapes = [*([shapes[first]] * first), *shapes[first:]] if first else shapes
    n1, n2 = x1.shape[0], x2.shape[0]
    itemsize = torch.finfo(dtype).bits // 8
    cap = CPU_ARRAY_BYTES if device.type == "cpu" else None
    if tile is None:
        t1, t2 = tile_shape(n1, n2, shapes, itemsize, memory_budget_bytes, cap)
    else:
        t1, t2 = (tile, tile) if isinstance(tile, int) else (int(tile[0]), int(tile[1]))
        t1, t2 = max(1, min(n1, t1)), max(1, min(n2, t2))
    if sym:
        t1 = t2 = min(t1, t2) if tile is None else t1
    rows = [(i, min(i + t1, n1)) for i in range(0, n1, t1)]
    cols = [(j, min(j + t2, n2)) for j in range(0, n2, t2)]
    tiles = [(r, c) for r in rows for c in cols if not sym or c[0] >= r[0]]
    want_ntk = "ntk" in keys
    out = {k: torch.empty((n1, n2), dtype=torch.float64, device=device) for k in keys}
    if n1 == 0 or n2 == 0:
        return out

    with no_tf32(), torch.no_grad():
        # Self pass: chunk of inputs whose self covariances fit the budget like a tile does.
        # (Only off-diagonal tiles read it; diagonal tiles carry their own covariances.)
        chunk = _pairs_in_budget(shapes, itemsize, memory_budget_bytes, cap)
        off_diagonal = any(not sym or r[0] != c[0] for r, c in tiles)
        var1 = _variance_cache(spec, x1, shapes, chunk, first) if off_diagonal else []
        var2 = var1 if sym else _variance_cache(spec, x2, shapes, chunk, first)
        with progress_bar(len(tiles), "infinite NTK", enabled=_show_progress(progress, len(tiles))) as bar:
            for (r0, r1), (c0, c1) in tiles:
                if sym and r0 == c0:
                    # Diagonal tile: carry its own self covariances, consistent bit for bit
                    # with the cross kernel's batch diagonal (exact NTK diagonal).
                    state = propagate(spec, input_state(x1[r0:r1], None, ntk=want_ntk), shapes, first)
                else:
                    state = input_state(x1[r0:r1], x2[c0:c1], ntk=want_ntk, covs=False)
                    for i, layer in enumerate(spec.layers[first:], first):
                        state = state.replace(var1=var1[i][r0:r1], var2=var2[i][c0:c1])
                        state = _apply(layer, i, shapes[i], state)
                for k in keys:
                    block = getattr(state, k)
                    block = block.expand(r1 - r0, c1 - c0) if block.ndim == 0 else block
                    block = block.to(torch.float64)
                    if sym and r0 == c0:
                        block = (block + block.T) / 2
                    out[k][r0:r1, c0:c1] = block
                    if sym and r0 != c0:
                        out[k][c0:c1, r0:r1] = block.T
                bar.update(1)
    return out
