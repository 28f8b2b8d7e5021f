"""Hierarchical clustering: ``linkage`` in scipy's Z format, with the scipy reference and backend wiring."""

from __future__ import annotations

import numpy as np
import scipy.cluster.hierarchy as sch
import torch

from . import ops
from ._checks import as_tensor, check_finite, check_float, check_host_memory
from .backends import (
    METHODS,
    MODES,
    STORAGES,
    SUPPORTS,
    BackendUnavailableError,
    companion,
    has_kernel,
    resolve,
    resolve_impl,
)
from .distance import _on_device, pairwise_distance

# METHODS: scipy's seven; MODES: "exact" | "strict"; STORAGES: the working matrix's dtype
# (linkage(..., storage=)), float64 by default, float32 halves the memory. Which backend implements
# which of them is declared in simprune.backends.SUPPORTS.
# Methods whose Lance-Williams update assumes Euclidean distances between raw observations.
EUCLIDEAN_ONLY = ("ward", "centroid", "median")
LINKAGE_METRICS = ("euclidean", "sqeuclidean", "cosine")


def linkage_ref(d: torch.Tensor, method: str, mode: str = "strict") -> torch.Tensor:
    """The reference: scipy's ``linkage`` on a condensed vector (float64). Exact and strict alike."""
    z = sch.linkage(d.detach().cpu().to(torch.float64).numpy(), method=method)
    return torch.from_numpy(np.ascontiguousarray(z)).to(d.device)


@torch.library.impl(ops.LIB, "linkage_torch", "CPU")
@torch.library.impl(ops.LIB, "linkage_torch", "CUDA")
def _linkage_torch_kernel(d, method, mode, storage=None):
    if storage is not None and storage != torch.float64:
        raise NotImplementedError(
            f"simprune::linkage_torch: storage={storage} is not implemented by the reference "
            "backend (scipy works in float64 only); use backend='cpu', 'triton' or 'cuda'"
        )
    return linkage_ref(d, method, mode)


# Triton: kernels/linkage.py (round primitives + host loop), imported on first use only.
@torch.library.impl(ops.LIB, "linkage_triton", "CPU")
@torch.library.impl(ops.LIB, "linkage_triton", "CUDA")
def _linkage_triton_kernel(d, method, mode, storage=None):
    from .kernels.linkage import linkage_triton

    with _on_device(d):
        return linkage_triton(d, method, mode, storage)


@torch.library.impl(ops.LIB, "linkage_batched_torch", "CPU")
@torch.library.impl(ops.LIB, "linkage_batched_torch", "CUDA")
def _linkage_batched_torch_kernel(d, sizes, method):
    zs, off = [], 0
    for n in sizes:
        m = n * (n - 1) // 2
        if n >= 2:
            zs.append(linkage_ref(d[off : off + m], method))
        off += m
    if off != d.numel():
        raise ValueError(f"the sizes need {off} condensed distances in all, got {d.numel()}")
    return torch.cat(zs) if zs else d.new_empty((0, 4), dtype=torch.float64)


def _square_to_condensed(d: torch.Tensor) -> torch.Tensor:
    n = d.shape[0]
    if d.shape[1] != n:
        raise ValueError(f"a square distance matrix must be (n, n), got shape {tuple(d.shape)}")
    if n and bool((d.diagonal() != 0).any()):
        raise ValueError("the diagonal of a square distance matrix must be exactly zero")
    scale = float(d.abs().max()) if d.numel() else 0.0
    if not torch.allclose(d, d.T, rtol=1e-10, atol=1e-12 * scale):
        err = float((d - d.T).abs().max())
        raise ValueError(f"the square distance matrix is not symmetric (max |D - D^T| = {err:.3g})")
    iu = torch.triu_indices(n, n, offset=1, device=d.device)
    return d[iu[0], iu[1]]


def _host_bytes_needed(
    backend: str, method: str, n: int, storage: torch.dtype, d: torch.Tensor | None
) -> list[tuple[str, int]]:
    """The O(n^2) host buffers one CPU ``linkage`` call allocates, as (what, bytes); ``d`` is None
    when the distances are still to be computed from observations."""
    m = n * (n - 1) // 2
    elem = storage.itemsize
    name = "float64" if elem == 8 else "float32"
    parts = []
    if d is None:
        parts.append((f"the {name} condensed distances", m * elem))
    converted = d is not None and d.dtype != storage
    if backend == "cpu" and (method != "single" or converted):
        parts.append((f"the cpu backend's {name} condensed working copy", m * elem))
    elif backend == "torch":  # scipy works on a float64 copy (and checks it for finiteness)
        parts.append(("scipy's float64 working copy", m * 8 * (2 if converted else 1) + m))
    elif backend == "triton":  # the interpreter: the square matrix and its first compaction
        parts.append((f"the {name} square matrix", elem * (n * n + (n // 2) ** 2)))
    return parts


def _check_host_memory(
    backend: str, method: str, n: int, storage: torch.dtype, d: torch.Tensor | None
) -> None:
    parts = _host_bytes_needed(backend, method, n, storage, d)
    if not parts:
        return
    what = " + ".join(f"{w}, {b} bytes" for w, b in parts) + ", plus O(n)"
    halves = storage == torch.float64 and backend in ("cpu", "triton")
    hint = " (storage=torch.float32 would halve it)" if halves else ""
    need = sum(b for _, b in parts) + 256 * n
    check_host_memory(need, f"simprune.linkage (backend={backend!r})", n, what, hint)


def linkage(
    x,
    method: str = "average",
    metric: str = "euclidean",
    *,
    precomputed: bool = False,
    mode: str = "exact",
    storage: torch.dtype = torch.float64,
    backend: str = "auto",
) -> torch.Tensor:
    """Agglomerative hierarchical clustering, returning scipy's linkage matrix.

    Parameters
    ----------
    x : Tensor
        Either observations ``(n, d)`` (distances computed with ``metric``), a condensed distance vector
        ``(n(n-1)/2,)`` (scipy's ``pdist`` order; a 1-D input is always taken as condensed, as in scipy),
        or a square distance matrix ``(n, n)`` with ``precomputed=True``.
    method : {"single", "complete", "average", "weighted", "ward", "centroid", "median"}
        scipy's methods. ward/centroid/median on observations need ``metric="euclidean"``.
    metric : {"euclidean", "sqeuclidean", "cosine"}
        Used only for observations.
    mode : {"exact", "strict"}
        "exact": the exact dendrogram; under tied distances a different (equally valid) tie choice than
        scipy's is allowed. "strict": bitwise scipy output, ties included.
    storage : {torch.float64, torch.float32}
        The working matrix's dtype. float32 halves the memory (and the traffic): Lance-Williams is
        still evaluated in float64 but every stored distance is rounded to float32, so heights agree
        with scipy to within about 1e-6 relative (tested at 1e-5) and trees can differ where two candidate
        merges are within that of each other. "exact" mode only; observations are then turned into
        float32 distances (a float64 distance beyond float32's range is refused as Inf). Backends:
        cpu, triton, cuda; the reference (scipy) computes in float64 only.
    backend : {"auto", "torch", "cpu", "triton", "cuda"}

    Returns
    -------
    Z : Tensor float64, shape (n-1, 4), on x's device
        scipy's format: row i merges clusters Z[i,0] < Z[i,1] at height Z[i,2] into cluster n+i of
        size Z[i,3]. n = 1 gives an empty (0, 4) matrix.

    Examples
    --------
    >>> import torch, simprune
    >>> x = torch.tensor([[0.0], [1.0], [5.0]], dtype=torch.float64)
    >>> simprune.linkage(x, "single")
    tensor([[0., 1., 1., 2.],
            [2., 3., 4., 3.]], dtype=torch.float64)
    """
    if method not in METHODS:
        raise ValueError(f"unknown linkage method {method!r}; expected one of {METHODS}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    if storage not in STORAGES:
        raise ValueError(f"storage must be torch.float64 or torch.float32, got {storage!r}")
    if storage == torch.float32 and mode == "strict":
        raise ValueError(
            "mode='strict' (bitwise scipy) needs float64 storage; storage=torch.float32 is an "
            "'exact'-mode option"
        )
    x = as_tensor(x, "x")
    check_float(x, "x")
    d: torch.Tensor | None = None  # None: observations, distances computed below
    if x.dim() == 1:
        if x.numel() == 0:
            raise ValueError(
                "an empty condensed distance vector is ambiguous (n = 0 or 1); pass observations "
                "instead"
            )
        d, n = x, ops.n_from_condensed(x.shape[0])
    elif x.dim() == 2 and precomputed:
        check_finite(x, "distance matrix")
        d, n = _square_to_condensed(x), x.shape[0]
    elif x.dim() == 2:
        if metric not in LINKAGE_METRICS:
            raise ValueError(f"unknown metric {metric!r}; expected one of {LINKAGE_METRICS}")
        if method in EUCLIDEAN_ONLY and metric != "euclidean":
            raise ValueError(
                f"method {method!r} is defined for Euclidean distances only; use metric='euclidean' "
                "or pass precomputed distances"
            )
        if x.shape[0] == 0:
            raise ValueError("cannot cluster 0 observations (empty input)")
        n = x.shape[0]
    else:
        raise ValueError(
            f"x must be 1-D (condensed distances) or 2-D (observations, or a square matrix with "
            f"precomputed=True), got {x.dim()}-D shape {tuple(x.shape)}"
        )
    if n <= 1:
        return torch.empty((0, 4), dtype=torch.float64, device=x.device)
    # Which implementation serves (method, mode, storage) here: simprune.backends decides.
    name, impl = resolve_impl(
        "linkage", backend, x.device, method=method, mode=mode, storage=storage
    )
    if x.device.type == "cpu":  # refused before any O(n^2) allocation (the GPU paths check theirs)
        _check_host_memory(name, method, n, storage, d)
    if d is None:
        # The distances use the same backend when it can compute them here, else the best one.
        d = pairwise_distance(
            x,
            metric=metric,
            condensed=True,
            out_dtype=storage,
            backend=companion("pairwise_distance", backend, x.device),
        )
    if not impl.supports.checks_values:  # else the kernel checks them itself, in its first pass
        check_finite(d, "distances")
        if bool((d < 0).any()):
            raise ValueError(f"distances must be non-negative; found {int((d < 0).sum())} negative")
    if d.dtype not in (torch.float32, torch.float64):
        d = d.to(torch.float32)
    assert impl.fn is not None
    if storage == torch.float32:
        return impl.fn(d.contiguous(), method, mode, storage)
    return impl.fn(d.contiguous(), method, mode)


# The largest problem the batched CUDA kernel takes (declared in simprune.backends.SUPPORTS).
BATCHED_MAX_N = SUPPORTS["linkage_batched"]["cuda"].max_n


def linkage_batched(
    ds: list[torch.Tensor], method: str = "average", *, backend: str = "auto"
) -> list[torch.Tensor]:
    """Cluster many independent condensed distance vectors in one call (e.g. every layer of a CNN).

    With ``backend="cuda"`` (the default on CUDA tensors when the extension has it) all problems of
    at most ``simprune.backends.SUPPORTS["linkage_batched"]["cuda"].max_n`` (2048) observations run
    in one kernel launch, one thread block each (linkage.md 7.5), and wider ones through the
    whole-GPU kernel; the other backends cluster one problem after another. "exact" mode.

    Parameters
    ----------
    ds : list of Tensor
        Condensed distance vectors (scipy's ``pdist`` order), float32 or float64, all on one device.
        An empty vector stands for a single observation (its Z is empty).
    method : {"single", "complete", "average", "weighted", "ward"}
        (centroid and median: the reference backend only.)
    backend : {"auto", "torch", "cpu", "triton", "cuda"}

    Returns
    -------
    list of Tensor
        One float64 Z of shape (n_g - 1, 4) per input, on the inputs' device.

    Examples
    --------
    >>> import torch, simprune
    >>> d1 = torch.tensor([1.0, 4.0, 3.0], dtype=torch.float64)
    >>> [tuple(z.shape) for z in simprune.linkage_batched([d1, d1[:1]], "single", backend="torch")]
    [(2, 4), (1, 4)]
    """
    if method not in METHODS:
        raise ValueError(f"unknown linkage method {method!r}; expected one of {METHODS}")
    if not ds:
        return []
    ds = [as_tensor(d, "ds[i]") for d in ds]
    for d in ds:
        check_float(d, "ds[i]")
        if d.dim() != 1:
            raise ValueError(
                f"every input must be a 1-D condensed vector, got shape {tuple(d.shape)}"
            )
    device = ds[0].device
    if any(d.device != device for d in ds):
        raise ValueError("all inputs of linkage_batched must be on one device")
    sizes = [ops.n_from_condensed(d.numel()) if d.numel() else 1 for d in ds]
    dtype = torch.float64 if any(d.dtype == torch.float64 for d in ds) else torch.float32
    name, impl = resolve_impl("linkage_batched", backend, device, method=method, mode="exact")
    if not impl.supports.checks_values:
        for d in ds:
            if d.numel():
                check_finite(d, "distances")
                if bool((d < 0).any()):
                    raise ValueError(f"distances must be non-negative; found {int((d < 0).sum())}")
    out: list[torch.Tensor] = [torch.empty((0, 4), dtype=torch.float64, device=device) for _ in ds]
    max_n = impl.supports.max_n
    batch = [g for g, n in enumerate(sizes) if n >= 2 and (impl.fn is not None)]
    batch = [g for g in batch if max_n is None or sizes[g] <= max_n]
    if batch:
        packed = torch.cat([ds[g].to(dtype) for g in batch]).contiguous()
        assert impl.fn is not None
        part = impl.fn(packed, [sizes[g] for g in batch], method)
        for g, z in zip(batch, torch.split(part, [sizes[g] - 1 for g in batch]), strict=True):
            out[g] = z
    # Problems without a batched kernel here (or wider than it takes): the backend's single op.
    rest = [g for g, n in enumerate(sizes) if n >= 2 and g not in set(batch)]
    if rest:
        single = resolve("linkage", name, device, method=method, mode="exact")[1]
        for g in rest:
            out[g] = single(ds[g].to(dtype).contiguous(), method, "exact")
    return out


def linkage_rounds(
    d: torch.Tensor, method: str = "average", storage: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-synchronous reciprocal-nearest-neighbour linkage (linkage.md 7.3), on the CPU.

    The CPU twin of the GPU algorithm (same per-element arithmetic), used by the tests and the
    benchmark to check the GPU algorithm's logic against scipy without a GPU. Exact for single,
    complete, average, weighted and ward; under tied distances it may resolve ties differently from
    scipy (it has no strict mode).

    Parameters
    ----------
    d : Tensor
        Condensed distances (scipy's ``pdist`` order), float32 or float64, on the CPU.
    method : {"single", "complete", "average", "weighted", "ward"}
    storage : {torch.float64, torch.float32}
        The square matrix's dtype; float32 is the GPU paths' float32 storage, bit for bit.

    Returns
    -------
    Z : Tensor float64 (n-1, 4)
        scipy's linkage matrix.
    stats : Tensor int64 (3,)
        (rounds, compactions, largest number of merges in one round).
    """
    if not has_kernel("linkage_rounds_cpu", "CPU"):
        raise BackendUnavailableError(
            "linkage_rounds needs the C++ extension (simprune._C with linkage_rounds_cpu); "
            "build it with: pip install --no-build-isolation -e ."
        )
    d = as_tensor(d, "d")
    check_float(d, "d")
    if d.dtype not in (torch.float32, torch.float64):
        d = d.to(torch.float32)
    return torch.ops.simprune.linkage_rounds_cpu(d.contiguous(), method, storage)


def is_valid_linkage(z: torch.Tensor) -> bool:
    """scipy's ``is_valid_linkage`` on a simprune Z (any device)."""
    return bool(sch.is_valid_linkage(z.detach().cpu().numpy()))
