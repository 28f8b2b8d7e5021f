"""Pairwise channel distances: the public function, its reference implementation and backend wiring.

Conventions follow scipy: metric names ``sqeuclidean``, ``euclidean``, ``cosine``; ``condensed=True``
returns scipy's ``pdist`` order (row-major upper triangle, length n(n-1)/2).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

from . import ops
from ._checks import as_tensor, check_finite, check_float, check_host_memory, check_matrix
from .backends import resolve, resolve_impl

METRICS = ("sqeuclidean", "euclidean", "cosine")
PRECISIONS = ("exact", "fast")

# Pairs whose expanded squared distance is below REPAIR_RATIO * (|x|^2 + |y|^2) (after centring) are
# recomputed by direct differences: there the expansion |x|^2 + |y|^2 - 2 x.y has lost most of its
# significant bits (fp64 error ~ d * eps * (|x|^2 + |y|^2)), and these are exactly the nearest pairs,
# the ones pruning acts on. Far pairs keep the fast GEMM result, accurate to ~d * eps / REPAIR_RATIO.
REPAIR_RATIO = 1e-2
_REPAIR_CHUNK_ELEMS = 1 << 22


def _sqeuclidean_fp64(x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """Accurate squared Euclidean distances in float64: centred expansion + direct repair of near pairs.

    With ``y is None`` the result is exactly symmetric (upper triangle mirrored) with a zero diagonal.
    """
    x = x.to(torch.float64)
    sym = y is None
    yy = x if sym else y.to(torch.float64)  # type: ignore[union-attr]
    # Centring is free and shrinks |x|^2, the scale of the cancellation error.
    mu = x.mean(0) if sym else torch.cat([x, yy]).mean(0)
    xc = x - mu
    yc = xc if sym else yy - mu
    nx = (xc * xc).sum(1)
    ny = nx if sym else (yc * yc).sum(1)
    scale = nx[:, None] + ny[None, :]
    d = (scale - 2.0 * (xc @ yc.T)).clamp_min_(0.0)
    near = d <= REPAIR_RATIO * scale
    if sym:
        near = torch.triu(near, diagonal=1)
    idx = near.nonzero()
    if idx.numel():
        step = max(1, _REPAIR_CHUNK_ELEMS // x.shape[1])
        for s in range(0, idx.shape[0], step):
            i, j = idx[s : s + step].unbind(1)
            diff = xc[i] - yc[j]
            d[i, j] = (diff * diff).sum(1)
    if sym:
        d = torch.triu(d, diagonal=1)
        d = d + d.T  # exact mirror; the diagonal is exactly 0
    return d


def _normalise_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm; all-zero rows stay zero (their cosine distance is then 1/2)."""
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return torch.where(norm > 0, x / torch.where(norm > 0, norm, 1.0), torch.zeros_like(x))


def pairwise_distance_ref(
    x: torch.Tensor,
    y: torch.Tensor | None,
    metric: str,
    condensed: bool,
    out_dtype: torch.dtype | None,
    precision: str = "exact",
) -> torch.Tensor:
    """The reference: float64 throughout, accurate to ~1e-13 relative even for near-duplicate rows.

    Also the CPU fallback. ``precision`` is accepted for signature parity and ignored (always exact).
    """
    out_dtype = out_dtype or torch.promote_types(x.dtype, torch.float32)
    if metric == "cosine":
        x = _normalise_rows(x.to(torch.float64))
        y = None if y is None else _normalise_rows(y.to(torch.float64))
    d = _sqeuclidean_fp64(x, y)
    if metric == "cosine":
        # 1 - cos(x, y) == |x^ - y^|^2 / 2 for unit vectors, without cancellation near cos = 1.
        d = d * 0.5
    elif metric == "euclidean":
        d = d.sqrt()
    if condensed:
        n = d.shape[0]
        iu = torch.triu_indices(n, n, offset=1, device=d.device)
        d = d[iu[0], iu[1]]
    return d.to(out_dtype)


@torch.library.impl(ops.LIB, "pairwise_distance_torch", "CPU")
@torch.library.impl(ops.LIB, "pairwise_distance_torch", "CUDA")
def _pairwise_distance_torch_kernel(x, y, metric, condensed, out_dtype, precision):
    return pairwise_distance_ref(x, y, metric, condensed, out_dtype, precision)


# Triton: kernels/distance.py, imported on first use only (importing simprune never imports Triton).
def _on_device(t: torch.Tensor):
    """Triton launches on the current CUDA device: make it the tensor's."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


@torch.library.impl(ops.LIB, "pairwise_distance_triton", "CPU")
@torch.library.impl(ops.LIB, "pairwise_distance_triton", "CUDA")
def _pairwise_distance_triton_kernel(x, y, metric, condensed, out_dtype, precision):
    from .kernels.distance import pairwise_distance_triton

    with _on_device(x):
        return pairwise_distance_triton(x, y, metric, condensed, out_dtype, precision)


def pairwise_distance_ragged_ref(packed, rows, cols, metric, condensed, out_dtype, precision):
    """Reference of the ragged op: one :func:`pairwise_distance_ref` per group, concatenated."""
    out_dtype = out_dtype or torch.promote_types(packed.dtype, torch.float32)
    res, off = [], 0
    for r, c in zip(rows, cols, strict=True):
        x = packed[off : off + r * c].view(r, c)
        off += r * c
        res.append(pairwise_distance_ref(x, None, metric, condensed, out_dtype).reshape(-1))
    if not res:
        return packed.new_empty((0,), dtype=out_dtype)
    return torch.cat(res)


@torch.library.impl(ops.LIB, "pairwise_distance_ragged_torch", "CPU")
@torch.library.impl(ops.LIB, "pairwise_distance_ragged_torch", "CUDA")
def _pairwise_distance_ragged_torch_kernel(packed, rows, cols, metric, condensed, out_dtype, prec):
    return pairwise_distance_ragged_ref(packed, rows, cols, metric, condensed, out_dtype, prec)


@torch.library.impl(ops.LIB, "pairwise_distance_ragged_triton", "CPU")
@torch.library.impl(ops.LIB, "pairwise_distance_ragged_triton", "CUDA")
def _pairwise_distance_ragged_triton_kernel(packed, rows, cols, metric, condensed, out_dtype, prec):
    from .kernels.distance import pairwise_distance_ragged_triton

    with _on_device(packed):
        return pairwise_distance_ragged_triton(
            packed, list(rows), list(cols), metric, condensed, out_dtype, prec
        )


def _check_inputs(x, y, metric, condensed, out_dtype, precision):
    x = as_tensor(x, "x")
    check_float(x, "x")
    check_matrix(x, "x")
    if y is not None:
        y = as_tensor(y, "y")
        check_float(y, "y")
        check_matrix(y, "y")
        if y.shape[1] != x.shape[1]:
            raise ValueError(
                f"x and y must have the same number of features, got {x.shape[1]} and {y.shape[1]}"
            )
        if y.device != x.device:
            raise ValueError(f"x is on {x.device} but y is on {y.device}")
        if condensed:
            raise ValueError("condensed=True needs y=None (it is the pdist form of x with itself)")
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")
    if out_dtype is not None and out_dtype not in (torch.float32, torch.float64):
        raise TypeError(f"out_dtype must be torch.float32 or torch.float64, got {out_dtype}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    check_finite(x, "x")
    if y is not None:
        check_finite(y, "y")
    return x, y


# Host bytes per output pair that the torch reference allocates at its peak (float64 expansion,
# scale, near-pair mask, the mirrored copy and, for condensed=True, the triangle's indices): measured
# 26 (n = 3000, every metric and layout), rounded up.
_REF_BYTES_PER_PAIR = 28
# The cpu backend's expansion works on row panels of this many rows (csrc/cpu/distance.cpp kPanel).
_CPU_PANEL_ROWS = 128


def _host_bytes_needed(
    backend: str, n: int, m: int, d: int, condensed: bool, out_dtype: torch.dtype
) -> list[tuple[str, int]]:
    """The host buffers one CPU ``pairwise_distance`` call allocates, as (what, bytes)."""
    pairs = n * (n - 1) // 2 if condensed else n * m
    name = "float64" if out_dtype == torch.float64 else "float32"
    parts = [(f"the {name} result", pairs * out_dtype.itemsize)]
    if backend == "torch":
        parts.append(("the float64 reference's working matrices", _REF_BYTES_PER_PAIR * n * m))
    elif backend == "cpu":
        parts.append(
            (
                "the centred rows and one row panel per thread",
                8 * (2 * (n + m) * d + torch.get_num_threads() * _CPU_PANEL_ROWS * m),
            )
        )
    return parts


def _check_host_memory(backend: str, n: int, m: int, d: int, condensed: bool, out_dtype) -> None:
    """Refuse a CPU problem that does not fit in host memory, before anything is allocated."""
    parts = _host_bytes_needed(backend, n, m, d, condensed, out_dtype)
    what = " + ".join(f"{w}, {b} bytes" for w, b in parts) + ", plus O(n)"
    need = sum(b for _, b in parts) + 64 * (n + m)
    check_host_memory(need, f"simprune.pairwise_distance (backend={backend!r})", n, what)


def _check_host_memory_batched(backend: str, xs: list[torch.Tensor], condensed: bool, out_dtype):
    """The batched form's refusal: every group's result, plus the largest group's working buffers."""
    results, working, what = 0, 0, ""
    for x in xs:
        n, d = x.shape
        odt = out_dtype or torch.promote_types(x.dtype, torch.float32)
        parts = _host_bytes_needed(backend, n, n, d, condensed, odt)
        results += parts[0][1]
        w = sum(b for _, b in parts[1:])
        if w > working:
            working, what = w, " + ".join(f"{w_}, {b} bytes" for w_, b in parts[1:])
    desc = f"the {len(xs)} groups' results, {results} bytes" + (
        f" + the working buffers of the largest group ({what})" if what else ""
    )
    need = results + working + 64 * sum(int(x.shape[0]) for x in xs)
    n_max = max(int(x.shape[0]) for x in xs)
    check_host_memory(
        need, f"simprune.pairwise_distance_batched (backend={backend!r})", n_max, desc
    )


def pairwise_distance(
    x,
    y=None,
    metric: str = "sqeuclidean",
    *,
    condensed: bool = False,
    out_dtype: torch.dtype | None = None,
    precision: str = "exact",
    backend: str = "auto",
) -> torch.Tensor:
    """Pairwise distances between the rows of ``x`` (and ``y``).

    Parameters
    ----------
    x : Tensor, shape (n, d)
        Observations (channels) in rows; float16, bfloat16, float32 or float64.
    y : Tensor, shape (m, d), optional
        Second set; ``None`` compares ``x`` with itself (then the result is exactly symmetric with an
        exactly zero diagonal).
    metric : {"sqeuclidean", "euclidean", "cosine"}
        scipy's names. ``cosine`` is ``1 - cos`` (computed as ``|x^ - y^|^2 / 2``, accurate near 0); an
        all-zero row has cosine distance 1/2 to every unit vector and 0 to another zero row.
    condensed : bool
        Return scipy's ``pdist`` vector (length n(n-1)/2) instead of the square matrix.
    out_dtype : torch.float32 or torch.float64, optional
        Default: float64 for float64 input, float32 otherwise. A float64 result is computed in
        float64 by every backend (<= 1e-12 relative), whatever the input dtype.
    precision : {"exact", "fast"}
        "exact" keeps <= 1e-6 relative error in float32 even for near-duplicate rows; "fast" lets the
        Triton kernel use 1xTF32 tensor cores (near pairs still recomputed exactly; about 2e-4
        relative on the rest). The other backends always compute exactly.
    backend : {"auto", "torch", "cpu", "triton", "cuda"}

    Returns
    -------
    Tensor on x's device, shape (n, m) or (n(n-1)/2,).

    Raises
    ------
    torch.OutOfMemoryError
        On the CPU, before anything is allocated, when the result and the backend's working buffers
        need more host memory than is available (the message names both byte counts).

    Examples
    --------
    >>> import torch, simprune
    >>> x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    >>> simprune.pairwise_distance(x, metric="euclidean")
    tensor([[ 0.,  5., 10.],
            [ 5.,  0.,  5.],
            [10.,  5.,  0.]])
    >>> simprune.pairwise_distance(x, condensed=True)
    tensor([ 25., 100.,  25.])
    """
    x, y = _check_inputs(x, y, metric, condensed, out_dtype, precision)
    name, fn = resolve("pairwise_distance", backend, x.device)
    if x.device.type == "cpu":
        m = x.shape[0] if y is None else y.shape[0]
        odt = out_dtype or torch.promote_types(x.dtype, torch.float32)
        _check_host_memory(name, x.shape[0], m, x.shape[1], condensed, odt)
    return fn(x, y, metric, condensed, out_dtype, precision)


def pairwise_distance_batched(
    xs: Sequence[torch.Tensor],
    metric: str = "sqeuclidean",
    *,
    condensed: bool = True,
    out_dtype: torch.dtype | None = None,
    precision: str = "exact",
    backend: str = "auto",
) -> list[torch.Tensor]:
    """Distances for many independent groups (each its own ``(n_g, d_g)``), one result per group.

    This is the shape of a whole network's analysis: one group per layer. Every group is validated
    before any work starts, so a bad group fails fast with its index in the message. A backend with
    a batched kernel (the Triton one: the default on CUDA tensors) runs all groups in one launch per
    kernel mode (direct differences for d <= 32, expansion otherwise), whatever the group count;
    the other backends loop over the groups.
    """
    checked = []
    for g, x in enumerate(xs):
        try:
            checked.append(_check_inputs(x, None, metric, False, out_dtype, precision)[0])
        except (TypeError, ValueError) as e:
            raise type(e)(f"group {g}: {e}") from e
    if not checked:
        return []
    dev, dt = checked[0].device, checked[0].dtype
    name, impl = resolve_impl("pairwise_distance_ragged", backend, dev)
    if all(x.device.type == "cpu" for x in checked):
        _check_host_memory_batched(name, checked, condensed, out_dtype)
    if impl.fn is not None and all(x.device == dev and x.dtype == dt for x in checked):
        # All groups in one launch (the grouped-GEMM pattern): the common case of a whole network.
        rows = [int(x.shape[0]) for x in checked]
        cols = [int(x.shape[1]) for x in checked]
        packed = torch.cat([x.reshape(-1) for x in checked])
        flat = impl.fn(packed, rows, cols, metric, condensed, out_dtype, precision)
        res, off = [], 0
        for r in rows:
            size = r * (r - 1) // 2 if condensed else r * r
            res.append(flat[off : off + size] if condensed else flat[off : off + size].view(r, r))
            off += size
        return res
    # No batched kernel for this backend (or mixed devices/dtypes): one call per group.
    return [
        resolve("pairwise_distance", name, x.device)[1](
            x, None, metric, condensed, out_dtype, precision
        )
        for x in checked
    ]
