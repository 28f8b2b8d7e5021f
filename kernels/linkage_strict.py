"""Strict mode of the Triton linkage: scipy's own sequential algorithms, bit for bit (linkage.md 7.4).

``linkage_strict_triton(d, method)`` returns a Z that is bitwise equal to ``scipy.cluster.hierarchy.
linkage(d, method)`` for any input, ties included, by replaying scipy's procedures step by step:

* complete / average / weighted / ward: ``_nn_chain_kernel`` replays scipy's ``nn_chain``
  (scipy/cluster/_hierarchy.pyx): a new chain starts at the lowest active slot; the top element's row
  is scanned with the previous chain element as the initial candidate and a strict ``<`` (the first
  minimal index wins, and a tie with the previous element keeps it, so the chain never cycles); two
  mutual neighbours x < y merge into slot y (slot x dies); Lance-Williams (``_lw`` of
  kernels/linkage.py, scipy's operation order, fp64, no FMA) rewrites row and column y for every other
  live slot.
* single: ``_mst_single_kernel`` replays scipy's ``mst_single_linkage``: Prim from point 0, the
  tentative distance of every unmerged point lowered with ``if D[i] > dist``, the next point the first
  index of the minimal tentative distance.

Each algorithm runs entirely inside ONE program (a persistent single-CTA kernel): one launch for the
whole clustering, no host round trip per step. The kernels log the merges (slot x, slot y, height) in
discovery order; the host then does what scipy does after the loop: a stable mergesort of the log by
height and ``label()`` (``sort_and_label`` of kernels/linkage.py, keyed on the true heights -- strict
mode has no monotone guard, exactly like scipy).

Cost
----
Inherently sequential: the NN-chain needs about 3n steps (each a row scan of the chain's top element;
a merge adds one Lance-Williams pass over a row), Prim n - 1 steps, each one O(n) and each depending on
the previous one. All of them run in a single CTA, so the run is latency-bound (a few microseconds per
step on a GPU, by linkage.md 7.4's estimate: about 0.1-0.25 s at n = 16k; not yet measured on hardware)
and uses one SM of the GPU. Memory: the n x n fp64 square matrix (8 n^2 bytes) plus O(n) vectors. Use
mode="exact" (kernels/linkage.py) for speed; this mode is for bitwise reproducibility of scipy.

Row scans are vectorised over BLOCK-wide chunks: each lane keeps its own best (value, index) across the
chunks with a strict ``<`` (so the earlier, smaller index wins a tie), and one reduction at the end picks
the minimal value and, among the lanes holding it, the smallest index: the first minimal index, which is
what scipy's sequential strict-``<`` scan returns. NaN (ward on non-Euclidean input) never wins a
comparison, in scipy or here.

Barriers
--------
On a GPU, the threads of a CTA do not see each other's global-memory stores without a barrier, and
warps run ahead of each other. Every store that another thread may later read (or that may overwrite
a value another thread has still to read) is separated from that access by ``tl.debug_barrier()``
(``__syncthreads``), which orders the CTA's global-memory accesses. The interpreter runs a program's
lanes in lock step; there the barrier is a no-op.

Floating point: every launch passes ``enable_fp_fusion=False`` (Triton would otherwise contract
``a * b + c`` into an FMA, which changes the last bit); fp64 division and square root are IEEE
round-to-nearest. Under ``TRITON_INTERPRET=1`` the kernels are numpy code with no FMA either.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .linkage import _LAUNCH as _SQ_LAUNCH
from .linkage import METHOD_CODE, SQ_B, _lw, _square_kernel, check_input, sort_and_label

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Chunk width of the row scans. The interpreter costs a fixed time per operation whatever its width,
# so a wide chunk would be fastest there; 64 makes the tests' larger sizes (65, 100) span two
# chunks, so that first-index tie-breaking across chunks is exercised on CPU. On the GPU one CTA of
# STRICT_WARPS warps scans 2048 entries (16 KiB of fp64) per chunk, 8 per thread. BLOCK must be at
# least the CTA's thread count (no element is owned by two threads, see _nn_chain_kernel).
GPU_BLOCK, GPU_WARPS = 2048, 8
STRICT_BLOCK = 64 if _INTERPRET else GPU_BLOCK
STRICT_WARPS = GPU_WARPS
# No FMA contraction on the GPU (scipy's arithmetic); ignored by the interpreter.
_LAUNCH = dict(num_warps=STRICT_WARPS, enable_fp_fusion=False)
# The square-matrix kernel of kernels/linkage.py runs with that module's own launch settings
# (_SQ_LAUNCH), which its AOT specs cover.

_IMAX = tl.constexpr(9223372036854775807)  # int64 max: "no index" in the argmin reductions


@triton.jit
def _first_min(best_v, best_i):
    """The first minimal (value, index) over the lanes' per-lane bests: the minimum, the smallest
    index holding it, and the value of that very entry (a min reduction may return +0.0 where the
    first minimal entry is -0.0; scipy keeps that entry's own value, sign included)."""
    v = tl.min(best_v, axis=0)
    i = tl.min(tl.where(best_v == v, best_i, _IMAX), axis=0)
    v = tl.min(tl.where(best_i == i, best_v, float("inf")), axis=0)
    return v, i


@triton.jit
def _fold_min(v, cols, best_v, best_i):
    """Fold one chunk into the per-lane running (best_v, best_i) with a strict '<': an earlier chunk
    (a smaller index) wins a tie, and NaN never wins, as with scipy's '<'."""
    better = v < best_v
    return tl.where(better, v, best_v), tl.where(better, cols, best_i)


@triton.jit
def _nn_chain_kernel(
    s_ptr,
    size_ptr,
    chain_ptr,
    log_ptr,
    n,
    METHOD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """scipy's ``nn_chain`` on the square fp64 matrix S (bit-symmetric, +inf diagonal), one program.

    ``size``: int64 (n,), all ones on entry (0 marks a dead slot, as in scipy); ``chain``: int64 (n,)
    scratch; ``log``: fp64 (n - 1, 3) out, (x, y, height) per merge in discovery order, x < y.

    Thread ownership: in the Lance-Williams loop, row my's chunk is loaded and stored through the same
    pointers (one layout, BLOCK >= the CTA's thread count: each element has one owner thread; were
    Triton to convert layouts between the load and the store, the conversion's own barrier would order
    them), and column my is not read in that loop. Scalar values (chain entries, sizes of the merged
    pair) are written by one thread and read by all, and rows are read by other threads in the next
    step: the barriers below publish them."""
    nl = n.to(tl.int64)
    offs = tl.arange(0, BLOCK).to(tl.int64)
    zero = nl * 0
    k = zero
    chain_len = zero
    y = zero  # scipy's y keeps its value across steps (matters only when no candidate is finite)
    while k < nl - 1:
        if chain_len == 0:
            # A new chain starts at the lowest active slot.
            first_v = tl.full([BLOCK], _IMAX, tl.int64)
            for c0 in range(0, nl, BLOCK):
                cols = c0 + offs
                sz = tl.load(size_ptr + cols, mask=cols < nl, other=0)
                first_v = tl.minimum(first_v, tl.where(sz > 0, cols, _IMAX))
            tl.store(chain_ptr, tl.min(first_v, axis=0))
            chain_len = zero + 1
            # chain[0] (one thread's store) is read by all threads just below.
            tl.debug_barrier()
        x = tl.load(chain_ptr + chain_len - 1)
        has_prev = chain_len > 1
        prev = tl.load(chain_ptr + chain_len - 2, mask=has_prev, other=-1)
        # The previous chain element is the initial candidate (scipy: avoids cycles under ties).
        cur = tl.load(s_ptr + x * nl + prev, mask=has_prev, other=float("inf")).to(tl.float64)
        if has_prev:
            y = prev
        # Row scan of x over the live slots: per-lane best with strict '<' (earlier chunk = smaller
        # index wins a tie), then the first index of the row minimum.
        best_v = tl.full([BLOCK], float("inf"), tl.float64)
        best_i = tl.full([BLOCK], _IMAX, tl.int64)
        for c0 in range(0, nl, BLOCK):
            cols = c0 + offs
            live = cols < nl
            sz = tl.load(size_ptr + cols, mask=live, other=0)
            live = live & (sz > 0) & (cols != x)
            v = tl.load(s_ptr + x * nl + cols, mask=live, other=float("inf"))
            best_v, best_i = _fold_min(v, cols, best_v, best_i)
        row_min, row_arg = _first_min(best_v, best_i)
        if row_min < cur:
            cur = row_min
            y = row_arg
        if has_prev & (y == prev):
            # ---- x and y are mutual nearest neighbours: merge them into the larger slot.
            chain_len -= 2
            mx = tl.minimum(x, y)
            my = tl.maximum(x, y)
            nx = tl.load(size_ptr + mx)
            ny = tl.load(size_ptr + my)
            tl.store(log_ptr + 3 * k, mx.to(tl.float64))
            tl.store(log_ptr + 3 * k + 1, my.to(tl.float64))
            tl.store(log_ptr + 3 * k + 2, cur)
            # Every thread has read size[mx], size[my] (and, in the scan, the chunk sizes) before
            # one thread overwrites them (a warp that ran ahead must not clobber them first) ...
            tl.debug_barrier()
            tl.store(size_ptr + mx, nx * 0)
            tl.store(size_ptr + my, nx + ny)
            # ... and the new sizes are visible to every thread before the update reads them.
            tl.debug_barrier()
            for c0 in range(0, nl, BLOCK):
                cols = c0 + offs
                live = cols < nl
                ni = tl.load(size_ptr + cols, mask=live, other=0)
                live = live & (ni > 0) & (cols != my)
                d_xi = tl.load(s_ptr + mx * nl + cols, mask=live, other=0.0)
                d_yi = tl.load(s_ptr + my * nl + cols, mask=live, other=0.0)
                # Masked lanes: d_xy = 0, no sqrt of a negative (the interpreter would warn).
                d_xy = tl.where(live, cur, 0.0)
                v = _lw(d_xi, d_yi, d_xy, nx, ny, ni, METHOD)
                # Row my and column my hold the same value (S stays bit-symmetric). Row my is read
                # above by the same thread that writes it; column my (row i, i live, i != mx, my) is
                # not read in this loop.
                tl.store(s_ptr + my * nl + cols, v, mask=live)
                tl.store(s_ptr + cols * nl + my, v, mask=live)
            k += 1
        else:
            tl.store(chain_ptr + chain_len, y)
            chain_len += 1
        # The next step reads chain entries, sizes and rows (column my included) that other threads
        # have just written.
        tl.debug_barrier()


@triton.jit
def _mst_single_kernel(s_ptr, dmin_ptr, merged_ptr, log_ptr, n, BLOCK: tl.constexpr):
    """scipy's ``mst_single_linkage`` (Prim from point 0) on the square fp64 matrix S, one program.

    ``dmin``: fp64 (n,), +inf on entry (tentative distances); ``merged``: int32 (n,), zeros on entry;
    ``log``: fp64 (n - 1, 3) out, (x, y, height) per step. dmin is read and written chunk-wise by the
    owning thread only (same offsets, same layout); merged[x] is one thread's store, read by all."""
    nl = n.to(tl.int64)
    offs = tl.arange(0, BLOCK).to(tl.int64)
    zero = nl * 0
    x = zero
    y = zero  # scipy keeps the previous y when nothing is below +inf (infinite input only)
    for k in range(0, nl - 1):
        tl.store(merged_ptr + x, 1)
        # merged[x] (one thread's store) is read by every thread in the scan; the barrier also keeps
        # a warp from marking x before the others finished the previous scan.
        tl.debug_barrier()
        best_v = tl.full([BLOCK], float("inf"), tl.float64)
        best_i = tl.full([BLOCK], _IMAX, tl.int64)
        for c0 in range(0, nl, BLOCK):
            cols = c0 + offs
            live = cols < nl
            mg = tl.load(merged_ptr + cols, mask=live, other=1)
            live = live & (mg == 0)
            dist = tl.load(s_ptr + x * nl + cols, mask=live, other=float("inf"))
            dm = tl.load(dmin_ptr + cols, mask=live, other=float("inf"))
            dm = tl.where(dm > dist, dist, dm)  # scipy: if D[i] > dist: D[i] = dist
            tl.store(dmin_ptr + cols, dm, mask=live)
            # scipy: if D[i] < current_min (first index wins ties)
            best_v, best_i = _fold_min(dm, cols, best_v, best_i)
        cur, arg = _first_min(best_v, best_i)  # scipy's current_min is D[y] itself
        if cur < float("inf"):
            y = arg
        tl.store(log_ptr + 3 * k, x.to(tl.float64))
        tl.store(log_ptr + 3 * k + 1, y.to(tl.float64))
        tl.store(log_ptr + 3 * k + 2, cur)
        x = y
        tl.debug_barrier()


def linkage_strict_triton(d: torch.Tensor, method: str) -> torch.Tensor:
    """Strict mode of ``simprune::linkage_triton``: Z bitwise equal to scipy's ``linkage``, ties included.

    ``d``: condensed distances (scipy's pdist order), float32 (widened to float64, as scipy does) or
    float64, on a CUDA device, or on the CPU under ``TRITON_INTERPRET=1``. ``method``: single,
    complete, average, weighted or ward. Returns float64 Z (n - 1, 4) on d's device.

    One single-CTA kernel launch replays scipy's NN-chain (or, for single, Prim's MST) on an n x n
    float64 matrix; the host then stable-sorts the merge log by height and relabels (scipy's
    ``label()``). Cost: about 3n sequential O(n) row scans (n - 1 for single) in one CTA --
    latency-bound and using one SM, far slower than mode="exact" on large inputs (linkage.md 7.4).
    Memory: 8 n^2 bytes on the device plus O(n); a problem that does not fit is refused up front
    (``torch.OutOfMemoryError``, with the needed and free bytes)."""
    op = "simprune::linkage_triton"
    n = check_input(d, method, op)  # float64 storage: the memory check counts 8 n^2 bytes
    dev = d.device
    if n < 2:
        return torch.empty((0, 4), dtype=torch.float64, device=dev)
    d = d.contiguous()
    s = torch.empty(n * n, dtype=torch.float64, device=dev)
    sq_grid = (triton.cdiv(n, SQ_B), triton.cdiv(n, SQ_B))
    _square_kernel[sq_grid](d, s, n, B=SQ_B, **_SQ_LAUNCH)
    log = torch.empty((n - 1) * 3, dtype=torch.float64, device=dev)
    if method == "single":
        dmin = torch.full((n,), float("inf"), dtype=torch.float64, device=dev)
        merged = torch.zeros(n, dtype=torch.int32, device=dev)
        _mst_single_kernel[(1,)](s, dmin, merged, log, n, BLOCK=STRICT_BLOCK, **_LAUNCH)
    else:
        size = torch.ones(n, dtype=torch.int64, device=dev)
        chain = torch.empty(n, dtype=torch.int64, device=dev)
        _nn_chain_kernel[(1,)](
            s, size, chain, log, n, METHOD=METHOD_CODE[method], BLOCK=STRICT_BLOCK, **_LAUNCH
        )
    merges = log.view(n - 1, 3).cpu().numpy()
    # scipy: argsort(Z[:, 2], kind="mergesort") on the true heights, then label().
    z = sort_and_label(merges, merges[:, 2].copy(), n)
    return torch.from_numpy(z).to(dev)


# --------------------------------------------------------------------------------------------------
# AOT specs (scripts/aot_check.py): every config launched above. The square-matrix kernel (fp32 and
# fp64 input -> fp64 matrix) is launched with kernels/linkage.py's settings and covered by its specs.
# --------------------------------------------------------------------------------------------------
def _aot_specs() -> list[dict]:
    specs: list[dict] = []
    for method in ("complete", "average", "weighted", "ward"):
        specs.append(
            dict(
                name=f"strict_nn_chain_{method}_b{STRICT_BLOCK}",
                fn=_nn_chain_kernel,
                signature={
                    "s_ptr": "*fp64",
                    "size_ptr": "*i64",
                    "chain_ptr": "*i64",
                    "log_ptr": "*fp64",
                    "n": "i64",
                    "METHOD": "constexpr",
                    "BLOCK": "constexpr",
                },
                constexprs=dict(METHOD=METHOD_CODE[method], BLOCK=STRICT_BLOCK),
                num_warps=STRICT_WARPS,
            )
        )
    specs.append(
        dict(
            name=f"strict_mst_single_b{STRICT_BLOCK}",
            fn=_mst_single_kernel,
            signature={
                "s_ptr": "*fp64",
                "dmin_ptr": "*fp64",
                "merged_ptr": "*i32",
                "log_ptr": "*fp64",
                "n": "i64",
                "BLOCK": "constexpr",
            },
            constexprs=dict(BLOCK=STRICT_BLOCK),
            num_warps=STRICT_WARPS,
        )
    )
    return specs


AOT_SPECS = _aot_specs()

__all__ = ["AOT_SPECS", "linkage_strict_triton"]
