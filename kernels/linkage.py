"""Triton round primitives of the exact round-synchronous linkage (linkage.md 7.3), and a host loop.

The algorithm is the one of the CPU twin (csrc/cpu/linkage_rounds.cpp,
``simprune::linkage_rounds_cpu``) and of the CUDA path (csrc/cuda/linkage_rounds.cu); this module must
produce the same Z as the twin. Every round:

1. ``_row_argmin_kernel``: nearest neighbour of every slot over the current (compacted) matrix, the
   smallest slot winning ties (dead slots and the diagonal hold +inf, so no mask is needed);
2. ``_reciprocal_kernel``: slot i pairs with j = nn[i] when i < j and nn[j] = i; the pair list is the
   flags' nonzero indices, i.e. slot order (deterministic);
3. ``_lw_phase1_kernel``: S[i][k] = S[k][i] = LW(S[i][k], S[j][k], S[i][j]) for each pair (i, j) and
   every live column k outside this round's pairs (pairs are disjoint and row j is only read, so the
   update is in place);
4. ``_lw_phase2_kernel``: the entry between two new clusters p < q, in one canonical order (p first,
   then q), from the four old cross entries; both mirrored entries get the one value;
5. ``_kill_kernel``: the dead slots' rows and columns become +inf;
6. ``_compact_kernel``: when the active count has halved, the live rows and columns are gathered
   into a smaller matrix, stably (slot order, hence tie-breaking, is kept).

Single linkage (``linkage_triton(..., "single")``) runs a Boruvka MST instead
(``_boruvka_rowmin_kernel``: at most ceil(log2 n) passes over the matrix, where the rounds would need
hundreds to thousands; ``linkage_rounds_triton`` still accepts "single", for comparison with the twin).

The merge log (representative leaves, height, effective height = the monotone guard of linkage.md 1.3)
and the final stable sort + relabel (scipy's ``label()``) run on the host. The round loop runs on the
host too (one synchronisation per round, to read the pair count): this path is the portable and
CI-testable one; the CUDA path (csrc/cuda/linkage_rounds.cu) is the host-free one.

Numerics
--------
Lance-Williams is evaluated in float64 in scipy's operation order (scipy/cluster/
_hierarchy_distance_update.pxi, the same expressions as simprune/linkage_common.h). Triton would
contract ``a * b + c`` into an FMA on the GPU, which changes the last bit: every launch passes
``enable_fp_fusion=False``. fp64 division and square root lower to the IEEE round-to-nearest
instructions. Under ``TRITON_INTERPRET=1`` the kernels are numpy code (no FMA either), so the CPU tests
check the same arithmetic as the twin, bit for bit.

Indices are int64 throughout (n^2 overflows int32 above n = 46,340).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import triton
import triton.language as tl

from simprune.ops import n_from_condensed

METHOD_CODE = {"single": 0, "complete": 1, "average": 2, "weighted": 3, "ward": 4}
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Tile sizes. The interpreter costs ~0.5 ms per program whatever its size, so it gets few, large
# programs; on the GPU a row-argmin program scans BR rows in BC-wide column chunks (coalesced rows).
if _INTERPRET:
    ARGMIN_BR, ARGMIN_BC = 64, 256
    PAIR_BP, PAIR_BC = 64, 256
    SQ_B = 128
    FLAG_B = 1024
else:
    ARGMIN_BR, ARGMIN_BC = 4, 512
    PAIR_BP, PAIR_BC = 4, 256
    SQ_B = 64
    FLAG_B = 1024
# Phase 2 (the entries between new clusters) on the GPU: 16 x 16 tiles. At 32 x 32 (8 entries per
# thread, each with four loads and three Lance-Williams evaluations) ward needed 255 registers and
# spilled 32-36 B; at 16 it takes 90-92, no spill (tests/test_linkage_triton.py checks every config).
PHASE2_B = 16 if not _INTERPRET else 64
NUM_WARPS = 4
# No FMA contraction on the GPU (scipy's arithmetic); ignored by the interpreter.
_LAUNCH = dict(num_warps=NUM_WARPS, enable_fp_fusion=False)


# --------------------------------------------------------------------------------------------------
# per-element arithmetic
# --------------------------------------------------------------------------------------------------
@triton.jit
def _lw(d_xi, d_yi, d_xy, size_x, size_y, size_i, METHOD: tl.constexpr):
    """Distance from cluster i to the union of x and y (scipy's Lance-Williams, fp64, no FMA).

    Sizes are int64 (summed as integers, then converted, as in scipy's Cython)."""
    if METHOD == 0:
        r = tl.where(d_yi < d_xi, d_yi, d_xi)
    elif METHOD == 1:
        r = tl.where(d_yi > d_xi, d_yi, d_xi)
    elif METHOD == 2:
        r = (size_x.to(tl.float64) * d_xi + size_y.to(tl.float64) * d_yi) / (size_x + size_y).to(
            tl.float64
        )
    elif METHOD == 3:
        r = 0.5 * (d_xi + d_yi)
    else:
        t = 1.0 / (size_x + size_y + size_i).to(tl.float64)
        a = (size_i + size_x).to(tl.float64) * t * d_xi * d_xi
        b = (size_i + size_y).to(tl.float64) * t * d_yi * d_yi
        c = size_i.to(tl.float64) * t * d_xy * d_xy
        r = tl.sqrt(a + b - c)
    return r


@triton.jit
def _chunk_first_min(v, rows, cols, best, arg):
    """Fold one (rows x chunk) tile of values into the running per-row (best, arg): the chunk's
    minimum and the first column holding it; only a strictly smaller value replaces the running one
    (an equal value in a later chunk has a larger index)."""
    tmin = tl.min(v, axis=1)
    big = tl.full(v.shape, 9223372036854775807, tl.int64)
    targ = tl.min(tl.where(v == tmin[:, None], cols[None, :] + 0 * rows[:, None], big), axis=1)
    better = tmin < best
    return tl.where(better, tmin, best), tl.where(better, targ, arg)


# --------------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------------
@triton.jit
def _square_kernel(d_ptr, s_ptr, n, B: tl.constexpr):
    """Condensed (scipy pdist order) -> square fp64 matrix, +inf on the diagonal.

    Entry (r, c) and (c, r) read the same condensed element, so S is bit-symmetric."""
    r = (tl.program_id(0) * B + tl.arange(0, B)).to(tl.int64)[:, None]
    c = (tl.program_id(1) * B + tl.arange(0, B)).to(tl.int64)[None, :]
    inside = (r < n) & (c < n)
    lo = tl.minimum(r, c)
    hi = tl.maximum(r, c)
    off = lo * n - lo * (lo + 1) // 2 + (hi - lo - 1)
    v = tl.load(d_ptr + off, mask=inside & (r != c), other=float("inf")).to(tl.float64)
    tl.store(s_ptr + r * n + c, v.to(s_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _row_argmin_kernel(s_ptr, nn_ptr, m, BR: tl.constexpr, BC: tl.constexpr):
    """nn[r] = first index of the minimum of row r (smallest slot wins ties), -1 if no finite entry.

    NaN (ward on non-Euclidean input) never wins, as with the twin's strict '<' scan."""
    rows = (tl.program_id(0) * BR + tl.arange(0, BR)).to(tl.int64)
    rmask = rows < m
    best = tl.full([BR], float("inf"), tl.float64)
    arg = tl.full([BR], -1, tl.int64)
    for c0 in range(0, m, BC):
        cols = c0 + tl.arange(0, BC).to(tl.int64)
        mask = rmask[:, None] & (cols < m)[None, :]
        v = tl.load(s_ptr + rows[:, None] * m + cols[None, :], mask=mask, other=float("inf"))
        v = v.to(tl.float64)
        v = tl.where(v == v, v, float("inf"))
        best, arg = _chunk_first_min(v, rows, cols, best, arg)
    tl.store(nn_ptr + rows, arg, mask=rmask)


@triton.jit
def _reciprocal_kernel(nn_ptr, flag_ptr, m, B: tl.constexpr):
    """flag[i] = 1 when i < j = nn[i] and nn[j] = i (i is the lower slot of a reciprocal pair)."""
    i = (tl.program_id(0) * B + tl.arange(0, B)).to(tl.int64)
    mask = i < m
    j = tl.load(nn_ptr + i, mask=mask, other=-1)
    ok = mask & (j > i)
    back = tl.load(nn_ptr + j, mask=ok, other=-1)
    tl.store(flag_ptr + i, (ok & (back == i)).to(tl.int8), mask=mask)


@triton.jit
def _lw_phase1_kernel(
    s_ptr,
    m,
    pi_ptr,
    pj_ptr,
    h_ptr,
    size_ptr,
    mark_ptr,
    npairs,
    METHOD: tl.constexpr,
    BP: tl.constexpr,
    BC: tl.constexpr,
):
    """Row i and column i of each pair (i, j), over the live columns outside this round's pairs
    (mark == 0). Row j is only read; the pairs are disjoint, so no entry is read after a write."""
    p = (tl.program_id(0) * BP + tl.arange(0, BP)).to(tl.int64)
    pmask = p < npairs
    i = tl.load(pi_ptr + p, mask=pmask, other=0)
    j = tl.load(pj_ptr + p, mask=pmask, other=0)
    h = tl.load(h_ptr + p, mask=pmask, other=0.0)
    ni = tl.load(size_ptr + i, mask=pmask, other=1)
    nj = tl.load(size_ptr + j, mask=pmask, other=1)
    cols = (tl.program_id(1) * BC + tl.arange(0, BC)).to(tl.int64)
    cmask = cols < m
    upd = cmask & (tl.load(mark_ptr + cols, mask=cmask, other=1) == 0)
    nk = tl.load(size_ptr + cols, mask=upd, other=1)
    mask = pmask[:, None] & upd[None, :]
    a = tl.load(s_ptr + i[:, None] * m + cols[None, :], mask=mask, other=0.0).to(tl.float64)
    b = tl.load(s_ptr + j[:, None] * m + cols[None, :], mask=mask, other=0.0).to(tl.float64)
    # Masked lanes get d_xy = 0 (no sqrt of a negative there: the interpreter would warn).
    hm = tl.where(mask, h[:, None], 0.0)
    v = _lw(a, b, hm, ni[:, None], nj[:, None], nk[None, :], METHOD)
    v = v.to(s_ptr.dtype.element_ty)
    tl.store(s_ptr + i[:, None] * m + cols[None, :], v, mask=mask)
    # Strided mirror store (the pairs' rows i are scattered: no layout of the tile coalesces it);
    # see the same write in csrc/cuda/linkage_rounds.cu phase C.
    tl.store(s_ptr + cols[None, :] * m + i[:, None], v, mask=mask)


@triton.jit
def _lw_phase2_kernel(
    s_ptr,
    m,
    pi_ptr,
    pj_ptr,
    h_ptr,
    size_ptr,
    npairs,
    METHOD: tl.constexpr,
    B: tl.constexpr,
):
    """The entry between new clusters P = (ip, jp) and Q = (iq, jq), p < q: merge P first, then Q
    (lance_williams_pair of linkage_common.h). Reads only entries phase 1 did not touch."""
    p = (tl.program_id(0) * B + tl.arange(0, B)).to(tl.int64)
    q = (tl.program_id(1) * B + tl.arange(0, B)).to(tl.int64)
    pm = p < npairs
    qm = q < npairs
    ip = tl.load(pi_ptr + p, mask=pm, other=0)[:, None]
    jp = tl.load(pj_ptr + p, mask=pm, other=0)[:, None]
    hp = tl.load(h_ptr + p, mask=pm, other=0.0)[:, None]
    iq = tl.load(pi_ptr + q, mask=qm, other=0)[None, :]
    jq = tl.load(pj_ptr + q, mask=qm, other=0)[None, :]
    hq = tl.load(h_ptr + q, mask=qm, other=0.0)[None, :]
    n_ip = tl.load(size_ptr + ip, mask=pm[:, None], other=1)
    n_jp = tl.load(size_ptr + jp, mask=pm[:, None], other=1)
    n_iq = tl.load(size_ptr + iq, mask=qm[None, :], other=1)
    n_jq = tl.load(size_ptr + jq, mask=qm[None, :], other=1)
    # Blocks below the block diagonal hold no q > p: fully masked (no early return, for Triton 3.6).
    mask = pm[:, None] & qm[None, :] & (q[None, :] > p[:, None])
    d_ip_iq = tl.load(s_ptr + ip * m + iq, mask=mask, other=0.0).to(tl.float64)
    d_jp_iq = tl.load(s_ptr + jp * m + iq, mask=mask, other=0.0).to(tl.float64)
    d_ip_jq = tl.load(s_ptr + ip * m + jq, mask=mask, other=0.0).to(tl.float64)
    d_jp_jq = tl.load(s_ptr + jp * m + jq, mask=mask, other=0.0).to(tl.float64)
    hp = tl.where(mask, hp, 0.0)  # masked lanes: no sqrt of a negative (interpreter warnings)
    hq = tl.where(mask, hq, 0.0)
    d_p_iq = _lw(d_ip_iq, d_jp_iq, hp, n_ip, n_jp, n_iq, METHOD)
    d_p_jq = _lw(d_ip_jq, d_jp_jq, hp, n_ip, n_jp, n_jq, METHOD)
    v = _lw(d_p_iq, d_p_jq, hq, n_iq, n_jq, n_ip + n_jp, METHOD).to(s_ptr.dtype.element_ty)
    tl.store(s_ptr + ip * m + iq, v, mask=mask)
    tl.store(s_ptr + iq * m + ip, v, mask=mask)


@triton.jit
def _kill_kernel(s_ptr, m, pj_ptr, npairs, BP: tl.constexpr, BC: tl.constexpr):
    """Row and column of every dead slot j become +inf (the argmin then needs no mask)."""
    p = (tl.program_id(0) * BP + tl.arange(0, BP)).to(tl.int64)
    pmask = p < npairs
    j = tl.load(pj_ptr + p, mask=pmask, other=0)
    cols = (tl.program_id(1) * BC + tl.arange(0, BC)).to(tl.int64)
    mask = pmask[:, None] & (cols < m)[None, :]
    inf = tl.full([BP, BC], float("inf"), tl.float64).to(s_ptr.dtype.element_ty)
    tl.store(s_ptr + j[:, None] * m + cols[None, :], inf, mask=mask)
    tl.store(s_ptr + cols[None, :] * m + j[:, None], inf, mask=mask)


@triton.jit
def _compact_kernel(s_ptr, m, keep_ptr, t_ptr, a, B: tl.constexpr):
    """T[r][c] = S[keep[r]][keep[c]]: the live submatrix, in slot order (keep is increasing)."""
    r = (tl.program_id(0) * B + tl.arange(0, B)).to(tl.int64)
    c = (tl.program_id(1) * B + tl.arange(0, B)).to(tl.int64)
    rm = r < a
    cm = c < a
    kr = tl.load(keep_ptr + r, mask=rm, other=0)
    kc = tl.load(keep_ptr + c, mask=cm, other=0)
    mask = rm[:, None] & cm[None, :]
    v = tl.load(s_ptr + kr[:, None] * m + kc[None, :], mask=mask)
    tl.store(t_ptr + r[:, None] * a + c[None, :], v, mask=mask)


@triton.jit
def _boruvka_rowmin_kernel(s_ptr, comp_ptr, w_ptr, u_ptr, n, BR: tl.constexpr, BC: tl.constexpr):
    """Single linkage (Boruvka): the lightest edge from each vertex to another component.

    For a fixed vertex v, ordering its edges by (w, u) is the same as the global edge order
    (w, min(u, v), max(u, v)), so the smallest index wins ties here as well."""
    rows = (tl.program_id(0) * BR + tl.arange(0, BR)).to(tl.int64)
    rmask = rows < n
    cr = tl.load(comp_ptr + rows, mask=rmask, other=-1)
    best = tl.full([BR], float("inf"), tl.float64)
    arg = tl.full([BR], -1, tl.int64)
    for c0 in range(0, n, BC):
        cols = c0 + tl.arange(0, BC).to(tl.int64)
        cm = cols < n
        cc = tl.load(comp_ptr + cols, mask=cm, other=-2)
        mask = rmask[:, None] & cm[None, :] & (cc[None, :] != cr[:, None])
        v = tl.load(s_ptr + rows[:, None] * n + cols[None, :], mask=mask, other=float("inf"))
        v = v.to(tl.float64)
        best, arg = _chunk_first_min(v, rows, cols, best, arg)
    tl.store(w_ptr + rows, best, mask=rmask)
    tl.store(u_ptr + rows, arg, mask=rmask)


# --------------------------------------------------------------------------------------------------
# host side
# --------------------------------------------------------------------------------------------------
def _cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def _check_memory(n: int, device: torch.device, elem: int = 8) -> None:
    """Refuse up front (needed vs free bytes) rather than fail with an OOM halfway through.

    ``elem``: bytes per matrix entry (8 for float64 storage, 4 for float32)."""
    if device.type != "cuda":
        return
    # The square matrix, the first compacted copy (at most a quarter) and O(n) vectors.
    need = elem * n * n + elem * (n // 2) ** 2 + 64 * n
    free, _ = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if need > free:
        raise torch.OutOfMemoryError(
            f"simprune linkage (triton): n = {n} needs {need / 2**30:.2f} GiB of GPU memory "
            f"(the {'float64' if elem == 8 else 'float32'} square matrix + one compacted copy), "
            f"only {free / 2**30:.2f} GiB is free on {device}"
            + (" (storage=torch.float32 halves it)" if elem == 8 else "")
        )


def storage_dtype(storage: torch.dtype | None, op: str) -> torch.dtype:
    """The working matrix's dtype: float64 (None, the default) or float32."""
    if storage is None or storage == torch.float64:
        return torch.float64
    if storage == torch.float32:
        return torch.float32
    raise ValueError(f"{op}: storage must be torch.float64 or torch.float32, got {storage}")


# Elements per slice of the failure path's counts (its temporaries stay this small).
COUNT_CHUNK = 1 << 24


def check_values(d: torch.Tensor, op: str, storage: torch.dtype = torch.float64) -> None:
    """Refuse NaN, Inf, negative values -- and, with float32 storage of float64 distances, values
    beyond float32's range (they would be stored as Inf) -- with their counts.

    No O(n^2) temporary: one fused min/max reduction decides (both propagate NaN); only a failing
    input is counted, in slices of ``COUNT_CHUNK`` elements."""
    limit = (
        torch.finfo(torch.float32).max
        if storage == torch.float32 and d.dtype == torch.float64
        else float("inf")
    )
    lo, hi = (float(v) for v in torch.stack(torch.aminmax(d)).cpu())  # one host round trip
    if lo >= 0.0 and hi <= limit and hi != float("inf"):  # NaN fails every comparison
        return
    counts = torch.zeros(3, dtype=torch.int64, device=d.device)
    for start in range(0, d.numel(), COUNT_CHUNK):
        c = d[start : start + COUNT_CHUNK]
        big = (c.abs() > limit) if limit != float("inf") else torch.isinf(c)
        counts += torch.stack([torch.isnan(c).sum(), big.sum(), (c < 0).sum()])
    n_nan, n_inf, n_neg = counts.tolist()
    if n_nan or n_inf:
        raise ValueError(
            f"{op}: distances contain {n_nan} NaN and {n_inf} Inf value(s); linkage needs "
            "finite distances"
            + (
                " (with storage=torch.float32, values beyond float32's range, 3.4e38, count as Inf)"
                if storage == torch.float32
                else ""
            )
        )
    raise ValueError(f"{op}: distances must be non-negative; found {n_neg} negative value(s)")


def check_input(d: torch.Tensor, method: str, op: str, storage: torch.dtype = torch.float64) -> int:
    """Validate a condensed distance vector for the linkage ops; returns n."""
    if method in ("centroid", "median"):
        raise NotImplementedError(
            f"{op}: method {method!r} is not reducible, so reciprocal-nearest-neighbour rounds "
            "do not apply; use backend='torch' (scipy)"
        )
    if method not in METHOD_CODE:
        raise ValueError(
            f"{op}: unknown linkage method {method!r}; expected single, complete, average, "
            "weighted or ward"
        )
    if d.dim() != 1:
        raise ValueError(
            f"{op}: expected a 1-D condensed distance vector, got shape {tuple(d.shape)}"
        )
    if d.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{op}: distances must be float32 or float64, got {d.dtype}")
    m = d.numel()
    try:
        n = n_from_condensed(m)
    except ValueError as e:
        raise ValueError(f"{op}: {e}") from None
    _check_memory(n, d.device, torch.finfo(storage).bits // 8)
    if m:
        check_values(d, op, storage)
    return n


def sort_and_label(log: np.ndarray, eff: np.ndarray, n: int) -> np.ndarray:
    """Stable sort of the merge log by effective height, then scipy's ``label()``.

    ``log`` (n-1, 3): representative leaves a, b and the height, in discovery order (round, then
    slot order within the round). NaN keys sort last (numpy's order)."""
    order = np.argsort(eff, kind="mergesort")
    z = np.zeros((n - 1, 4), dtype=np.float64)
    z[:, :3] = log[order]
    parent = list(range(2 * n - 1))
    size = [1] * (2 * n - 1)
    reps = z[:, :2].astype(np.int64).tolist()
    out01 = np.empty((n - 1, 2), dtype=np.float64)
    sizes = np.empty(n - 1, dtype=np.float64)
    for r, (x, y) in enumerate(reps):
        roots = []
        for v in (x, y):
            root = v
            while parent[root] != root:
                root = parent[root]
            while parent[v] != root:  # path compression, as scipy's LinkageUnionFind
                parent[v], v = root, parent[v]
            roots.append(root)
        xr, yr = roots
        new = n + r
        parent[xr] = parent[yr] = new
        size[new] = size[xr] + size[yr]
        out01[r] = (min(xr, yr), max(xr, yr))
        sizes[r] = size[new]
    z[:, :2] = out01
    z[:, 3] = sizes
    return z


def linkage_rounds_triton(
    d: torch.Tensor, method: str, storage: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-synchronous RNN linkage with the Triton primitives; returns (Z, stats).

    ``d``: condensed distances (fp32 or fp64) on a CUDA device, or on the CPU under
    ``TRITON_INTERPRET=1``. ``storage``: the matrix's dtype, float64 (None) or float32 (Lance-Williams
    still in float64, each stored value rounded to float32, as the twin's float storage). Z is float64
    (n-1, 4) on d's device; stats is int64 (3,) = (rounds, compactions, largest number of merges in
    one round), as the CPU twin's."""
    op = "simprune::linkage_triton"
    sdtype = storage_dtype(storage, op)
    n = check_input(d, method, op, sdtype)
    dev = d.device
    stats = torch.zeros(3, dtype=torch.int64)
    if n < 2:
        return torch.empty((0, 4), dtype=torch.float64, device=dev), stats
    meth = METHOD_CODE[method]
    d = d.contiguous()
    s = torch.empty(n * n, dtype=sdtype, device=dev)
    _square_kernel[(_cdiv(n, SQ_B), _cdiv(n, SQ_B))](d, s, n, B=SQ_B, **_LAUNCH)

    i64: dict[str, Any] = dict(dtype=torch.int64, device=dev)  # int64 tensors on d's device
    rep = torch.arange(n, **i64)  # representative leaf per slot
    size = torch.ones(n, **i64)
    last = torch.full((n,), -1, **i64)  # the slot's latest merge (for the monotone guard)
    dead = torch.zeros(n, dtype=torch.bool, device=dev)
    nn = torch.empty(n, **i64)
    flag = torch.empty(n, dtype=torch.int8, device=dev)
    # Merge log in discovery order; eff has a sentinel -1 at index n-1, which last = -1 selects.
    log = torch.empty((n - 1, 3), dtype=torch.float64, device=dev)
    eff = torch.full((n,), -1.0, dtype=torch.float64, device=dev)
    m, active, k = n, n, 0
    n_rounds = n_comp = widest = 0
    while active > 1:
        n_rounds += 1
        _row_argmin_kernel[(_cdiv(m, ARGMIN_BR),)](s, nn, m, BR=ARGMIN_BR, BC=ARGMIN_BC, **_LAUNCH)
        _reciprocal_kernel[(_cdiv(m, FLAG_B),)](nn, flag, m, B=FLAG_B, **_LAUNCH)
        pi = torch.nonzero(flag[:m]).flatten()  # slot order (host synchronisation: the count)
        npairs = pi.numel()
        if npairs == 0:
            raise RuntimeError(
                f"{op}: no reciprocal pair in round {n_rounds} with {active} active clusters "
                "(non-finite distances after an update?)"
            )
        widest = max(widest, npairs)
        pj = nn[pi]
        h = s[pi * m + pj].to(torch.float64)
        # ---- merge log (the union keeps slot i)
        log[k : k + npairs, 0] = rep[pi].to(torch.float64)
        log[k : k + npairs, 1] = rep[pj].to(torch.float64)
        log[k : k + npairs, 2] = h
        e = h.clone()  # effective_height(): e = h; then each child's if strictly larger
        for c in (eff[last[pi]], eff[last[pj]]):
            e = torch.where(c > e, c, e)
        eff[k : k + npairs] = e
        last[pi] = torch.arange(k, k + npairs, **i64)
        k += npairs
        # ---- Lance-Williams: phase 1 (columns outside the pairs), phase 2 (between new clusters)
        mark = dead[:m].to(torch.int8)
        mark[pi] = 1
        mark[pj] = 1
        grid1 = (_cdiv(npairs, PAIR_BP), _cdiv(m, PAIR_BC))
        _lw_phase1_kernel[grid1](
            s, m, pi, pj, h, size, mark, npairs, METHOD=meth, BP=PAIR_BP, BC=PAIR_BC, **_LAUNCH
        )
        if npairs > 1:
            g2 = _cdiv(npairs, PHASE2_B)
            _lw_phase2_kernel[(g2, g2)](
                s, m, pi, pj, h, size, npairs, METHOD=meth, B=PHASE2_B, **_LAUNCH
            )
        # ---- bookkeeping: sizes, dead slots poisoned
        size[pi] += size[pj]
        size[pj] = 0
        dead[pj] = True
        _kill_kernel[grid1](s, m, pj, npairs, BP=PAIR_BP, BC=PAIR_BC, **_LAUNCH)
        active -= npairs
        # ---- compaction when the active count has halved (stable)
        if active > 1 and 2 * active <= m:
            n_comp += 1
            keep = torch.nonzero(~dead[:m]).flatten()
            a = keep.numel()
            t = torch.empty(a * a, dtype=s.dtype, device=dev)
            _compact_kernel[(_cdiv(a, SQ_B), _cdiv(a, SQ_B))](s, m, keep, t, a, B=SQ_B, **_LAUNCH)
            s = t
            rep, size, last = rep[keep], size[keep], last[keep]
            dead = torch.zeros(a, dtype=torch.bool, device=dev)
            m = a
    z = sort_and_label(log.cpu().numpy(), eff[: n - 1].cpu().numpy(), n)
    stats[0], stats[1], stats[2] = n_rounds, n_comp, widest
    return torch.from_numpy(z).to(dev), stats


def linkage_boruvka_triton(
    d: torch.Tensor, storage: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Single linkage as a minimum spanning tree (Boruvka), then sort + relabel; returns (Z, stats).

    Each iteration: the lightest edge from every vertex to another component (the Triton kernel,
    one pass over the matrix), then per component the lightest of those under the total order
    (w, min id, max id) -- which makes the choice graph a forest, so no cycles -- then the components
    are merged by pointer jumping. At most ceil(log2 n) iterations. Edges are logged per iteration
    in increasing component order; the final stable sort by height therefore breaks ties by
    (iteration, component). Heights are input distances, so they are bit-identical to scipy's (the
    MST weight multiset is unique); on tie-free data Z equals scipy's. stats = (iterations, 0, most
    edges added in one iteration)."""
    op = "simprune::linkage_triton"
    sdtype = storage_dtype(storage, op)
    n = check_input(d, "single", op, sdtype)
    dev = d.device
    stats = torch.zeros(3, dtype=torch.int64)
    if n < 2:
        return torch.empty((0, 4), dtype=torch.float64, device=dev), stats
    d = d.contiguous()
    s = torch.empty(n * n, dtype=sdtype, device=dev)
    _square_kernel[(_cdiv(n, SQ_B), _cdiv(n, SQ_B))](d, s, n, B=SQ_B, **_LAUNCH)
    i64: dict[str, Any] = dict(dtype=torch.int64, device=dev)  # int64 tensors on d's device
    ids = torch.arange(n, **i64)
    comp = ids.clone()  # component label = one of its vertices (that vertex's own label)
    w = torch.empty(n, dtype=torch.float64, device=dev)
    u = torch.empty(n, **i64)
    log = torch.empty((n - 1, 3), dtype=torch.float64, device=dev)
    none = torch.iinfo(torch.int64).max
    k = iters = widest = 0
    while k < n - 1:
        iters += 1
        _boruvka_rowmin_kernel[(_cdiv(n, ARGMIN_BR),)](
            s, comp, w, u, n, BR=ARGMIN_BR, BC=ARGMIN_BC, **_LAUNCH
        )
        valid = u >= 0
        a = torch.minimum(ids, u)
        b = torch.maximum(ids, u)
        # Per component: the lightest weight, then the smallest (min id, max id) at that weight.
        cw = torch.full((n,), float("inf"), dtype=torch.float64, device=dev)
        cw.scatter_reduce_(0, comp[valid], w[valid], "amin")
        at_min = valid & (w == cw[comp])
        ck = torch.full((n,), none, **i64)
        ck.scatter_reduce_(0, comp[at_min], (a * n + b)[at_min], "amin")
        roots = torch.nonzero((comp == ids) & (ck != none)).flatten()  # increasing order
        if roots.numel() == 0:
            raise RuntimeError(f"{op}: Boruvka found no edge with {n - k} components left")
        key = ck[roots]
        ea, eb = key // n, key % n
        other = torch.where(comp[ea] == roots, comp[eb], comp[ea])
        mutual = ck[other] == key
        keep_self = mutual & (roots < other)
        rec = ~mutual | keep_self  # a mutual choice is one edge: logged by the smaller root
        ra, rb = ea[rec], eb[rec]
        cnt = ra.numel()
        log[k : k + cnt, 0] = ra.to(torch.float64)
        log[k : k + cnt, 1] = rb.to(torch.float64)
        log[k : k + cnt, 2] = s[ra * n + rb]
        k += cnt
        widest = max(widest, cnt)
        parent = ids.clone()
        parent[roots] = torch.where(keep_self, roots, other)
        for _ in range(64):  # pointer jumping to the surviving root (2^64 > any chain)
            nxt = parent[parent]
            if bool((nxt == parent).all()):
                break
            parent = nxt
        else:
            raise RuntimeError(f"{op}: Boruvka's choice graph has a cycle (internal error)")
        comp = parent[comp]
    logc = log.cpu().numpy()
    z = sort_and_label(logc, logc[:, 2].copy(), n)
    stats[0], stats[2] = iters, widest
    return torch.from_numpy(z).to(dev), stats


def linkage_triton(
    d: torch.Tensor, method: str, mode: str = "exact", storage: torch.dtype | None = None
) -> torch.Tensor:
    """Triton implementation of ``simprune::linkage_triton``.

    mode="exact": the round-synchronous RNN rounds (Boruvka for single) of this module.
    mode="strict": scipy's own sequential NN-chain / Prim replayed in one CTA, bitwise scipy, ties
    included (kernels/linkage_strict.py; latency-bound); float64 storage only."""
    if mode == "strict":
        if storage is not None and storage != torch.float64:
            raise ValueError(
                "simprune::linkage_triton: mode='strict' (bitwise scipy) needs float64 storage; "
                f"storage={storage} is an 'exact'-mode option"
            )
        from .linkage_strict import linkage_strict_triton  # imports this module: load it lazily

        return linkage_strict_triton(d, method)
    if mode != "exact":
        raise ValueError(
            f"simprune::linkage_triton: unknown mode {mode!r}; expected 'exact' or 'strict'"
        )
    if method == "single":
        return linkage_boruvka_triton(d, storage)[0]
    return linkage_rounds_triton(d, method, storage)[0]


# --------------------------------------------------------------------------------------------------
# AOT specs (scripts/aot_check.py): every kernel, every method of the Lance-Williams kernels.
# --------------------------------------------------------------------------------------------------
def _aot_specs() -> list[dict]:
    """One entry per kernel x storage dtype (float64, float32) x Lance-Williams method."""
    specs: list[dict] = []
    i64, i8 = "*i64", "*i8"

    def add(name: str, fn, signature: dict, **constexprs) -> None:
        for key in constexprs:
            signature[key] = "constexpr"
        specs.append(
            dict(
                name=name,
                fn=fn,
                signature=signature,
                constexprs=constexprs,
                num_warps=NUM_WARPS,
            )
        )

    for st in ("fp64", "fp32"):
        s = f"*{st}"
        for src in ("fp32", "fp64"):
            add(f"square_{src}_to_{st}_b{SQ_B}", _square_kernel,
                {"d_ptr": f"*{src}", "s_ptr": s, "n": "i64"}, B=SQ_B)  # fmt: skip
        add(f"row_argmin_{st}_br{ARGMIN_BR}_bc{ARGMIN_BC}", _row_argmin_kernel,
            {"s_ptr": s, "nn_ptr": i64, "m": "i64"}, BR=ARGMIN_BR, BC=ARGMIN_BC)  # fmt: skip
        for method, code in METHOD_CODE.items():
            add(f"lw_phase1_{method}_{st}_bp{PAIR_BP}_bc{PAIR_BC}", _lw_phase1_kernel,
                {"s_ptr": s, "m": "i64", "pi_ptr": i64, "pj_ptr": i64, "h_ptr": "*fp64",
                 "size_ptr": i64, "mark_ptr": i8, "npairs": "i64"},
                METHOD=code, BP=PAIR_BP, BC=PAIR_BC)  # fmt: skip
            add(f"lw_phase2_{method}_{st}_b{PHASE2_B}", _lw_phase2_kernel,
                {"s_ptr": s, "m": "i64", "pi_ptr": i64, "pj_ptr": i64, "h_ptr": "*fp64",
                 "size_ptr": i64, "npairs": "i64"},
                METHOD=code, B=PHASE2_B)  # fmt: skip
        add(f"kill_{st}_bp{PAIR_BP}_bc{PAIR_BC}", _kill_kernel,
            {"s_ptr": s, "m": "i64", "pj_ptr": i64, "npairs": "i64"}, BP=PAIR_BP, BC=PAIR_BC)  # fmt: skip
        add(f"boruvka_rowmin_{st}_br{ARGMIN_BR}_bc{ARGMIN_BC}", _boruvka_rowmin_kernel,
            {"s_ptr": s, "comp_ptr": i64, "w_ptr": "*fp64", "u_ptr": i64, "n": "i64"},
            BR=ARGMIN_BR, BC=ARGMIN_BC)  # fmt: skip
        add(f"compact_{st}_b{SQ_B}", _compact_kernel,
            {"s_ptr": s, "m": "i64", "keep_ptr": i64, "t_ptr": s, "a": "i64"}, B=SQ_B)  # fmt: skip
    add(f"reciprocal_b{FLAG_B}", _reciprocal_kernel,
        {"nn_ptr": i64, "flag_ptr": i8, "m": "i64"}, B=FLAG_B)  # fmt: skip
    return specs


AOT_SPECS = _aot_specs()
