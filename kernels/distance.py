"""Triton pairwise-distance kernels: one tiled loop, metric epilogues, exact-by-default numerics.

Layout of the work
------------------
* Symmetric case (``y is None``): only the upper-triangle tiles (ti <= tj) are launched, one program
  per tile; each program writes its tile *and* the mirrored tile, so the matrix is bit-symmetric by
  construction (tensor-core tiles (i, j) and (j, i) would not round identically). Inside a diagonal
  tile only the entries with row < col are kept (and mirrored); the diagonal is written as exactly 0.
* ``condensed=True`` writes scipy's ``pdist`` order directly (row-major upper triangle, int64 indices:
  n(n-1)/2 overflows int32 above n = 65,536).
* Ragged batch: many groups (n_g x d_g each, packed into one flat buffer) in one launch, the
  grouped-GEMM pattern: a host-built tile table maps program -> (group, ti, tj), a group table holds
  each group's offsets and sizes.

Numerics (why the default mode is accurate)
-------------------------------------------
The pairs that matter for pruning are the nearest ones, exactly where the expansion
|x|^2 + |y|^2 - 2 x.y cancels: its absolute error is ~eps (|x|^2 + |y|^2), so its *relative* error is
~eps (|x|^2 + |y|^2) / d^2 (linkage.md §4.5: fp32 up to 15 %, TF32 up to 440 % on near-duplicates).
The default ("exact") mode therefore

1. centres the data (three small O(n d) prep kernels in float64: row norms for cosine, column means,
   then centred (and normalised) rows with their squared norms, rounded once to the compute dtype;
   this makes (|x|^2 + |y|^2) of the same size as a typical d^2, so far pairs lose no digits, and
   fuses the cosine normalisation: no normalised or float64 copy of the input is ever stored);
2. computes the expansion with ``tl.dot(..., input_precision="tf32x3")`` (three TF32 tensor-core
   products, ~fp32 accuracy; plain fp32 ``tl.dot`` would silently use 1xTF32) and fp32 accumulation;
3. flags every pair whose expanded value is below ``REPAIR_RATIO * (|x|^2 + |y|^2)`` (elsewhere the
   cancellation costs at most a factor 1 / REPAIR_RATIO = 4 on the product rounding error, which keeps
   them within 1e-6: see the emulation below), appends it to a compact list, and recomputes exactly those
   pairs by **direct differences of the original (uncentred) inputs** with float64 accumulation in a
   second small kernel. Recomputing whole tiles instead would cost ~70x a tensor-core tile each (fp64
   on CUDA cores), and ~10 % of the tiles hold a near-duplicate on the channel-like set.

Measured by emulating 3xTF32 rounding in numpy (n = 600, d = 64 to 1024; the check is
``tests/test_distance_kernels.py::test_repair_ratio_bounds_emulated_3xtf32``): without the repair the
max relative error is 4e-4 to 7e-4 (channel-like) and 4e-6 (Gaussian mixture); with the repair at
REPAIR_RATIO = 0.25 it is <= 2.4e-7 on every set, repairing < 0.1 % (channel-like) to 3 % (mixture:
all same-cluster pairs) of the pairs. Under ``TRITON_INTERPRET=1`` ``tl.dot`` is an exact fp32 numpy
product, so CPU tests check the algorithm (centring + selection + repair), the GPU tests (``-m gpu``)
check the tensor-core rounding.

For small d (``d <= DIRECT_MAX_D``) the kernel uses direct differences for every pair (no tensor-core
benefit there, and the write bandwidth dominates). float64 inputs, and any input with a float64 output
requested (a float64 result promises ~1e-12, e.g. linkage heights compared with scipy), compute in
float64 throughout (fp64 ``tl.dot``, repair ratio 1e-2: error ~1e-16 (|x|^2 + |y|^2) / d^2 <= 1e-13
for the rest).

The opt-in "fast" mode uses 1xTF32 products with the same centring and the same near-pair repair;
emulated max relative error on the sets above: 2.2e-4 (Gaussian, channel-like, mixture; d = 64 to
1024). Without the repair TF32 reaches 128 % on the channel-like near-duplicates.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Pairs with expanded value < ratio * (|x|^2 + |y|^2) are recomputed exactly (see the module doc).
REPAIR_RATIO = {torch.float32: 0.25, torch.float64: 1e-2}
# Below this many features every pair is computed by direct differences.
DIRECT_MAX_D = 32
METRIC_CODE = {"sqeuclidean": 0, "euclidean": 1, "cosine": 2}
MODE_EXPAND, MODE_DIRECT = 0, 1

# (BM, BK, num_warps, num_stages) per compute dtype and mode. Square tiles (BM x BM) because the
# symmetric launch mirrors tiles. Chosen so that no config spills on sm_90 or sm_80 (ptxas -v, recorded
# by scripts/aot_check.py, which fails on a spill in these "hot" kernels): the former fp32 expansion
# config, 128 x 128 tiles with 8 warps, sat at 255 registers with 136-568 B of spills on sm_90 (up to
# ~1 KB on sm_80), its epilogue (tile norms, near-pair flags and compaction, mirrored stores) being as
# large as the tf32x3 product's operands; 64 x 64 with 8 warps and BK = 16 needs 122-159 registers
# on sm_90 (183-206 on sm_80) and spills nowhere (BK = 32: 36/24 B of spills on sm_80). Direct
# differences accumulate in fp64: 8 warps for fp32 halve the per-thread tile (4 warps: 636 B of
# spills for the ragged cosine variant).
CONFIGS = {
    (torch.float32, MODE_EXPAND): (64, 16, 8, 3),
    (torch.float64, MODE_EXPAND): (64, 16, 4, 2),
    (torch.float32, MODE_DIRECT): (64, 16, 8, 1),
    (torch.float64, MODE_DIRECT): (64, 16, 4, 1),
}
# Repair: BP pairs per program, BK features per step; 8 warps (4: 504 B of spills for cosine, whose
# fp64 normalisation doubles the operands).
REPAIR_BP, REPAIR_BK, REPAIR_WARPS = 64, 32, 8
# Initial capacity of the near-pair list: max(MIN_REPAIR_CAP, 8 * rows).
MIN_REPAIR_CAP = 4096
# Most entries the near-pair list may hold (12 bytes each: 24 GiB at the limit). The kernel's cap
# argument is int32; the flag counter is int64 and never wraps. More flagged pairs than this is
# refused with an error (the data is then clustered so tightly that most pairs need the repair).
MAX_REPAIR_PAIRS = 2**31 - 1


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
@triton.jit
def _tri_tile(pid):
    """Linear program id -> (ti, tj) with ti <= tj, enumerating the upper triangle column by column."""
    tj = ((tl.sqrt((8 * pid + 1).to(tl.float32)) - 1.0) * 0.5).to(tl.int32)
    # fp32 sqrt can be one off near perfect squares: correct both ways.
    tj = tl.where(tj * (tj + 1) // 2 > pid, tj - 1, tj)
    tj = tl.where((tj + 1) * (tj + 2) // 2 <= pid, tj + 1, tj)
    ti = pid - tj * (tj + 1) // 2
    return ti, tj


@triton.jit
def _group_row(groups_ptr, g):
    """Row g of a group table: (elem_off, row_off, n, d, fifth column) -- the fifth is the output
    offset in the distance kernels' table and the column offset in the prep kernels' one."""
    gp = groups_ptr + 5 * g
    return tl.load(gp), tl.load(gp + 1), tl.load(gp + 2), tl.load(gp + 3), tl.load(gp + 4)


@triton.jit
def _finish(dist, METRIC: tl.constexpr):
    """Metric epilogue on squared distances (clamped >= 0)."""
    dist = tl.maximum(dist, 0.0)
    if METRIC == 1:
        if dist.dtype == tl.float64:
            dist = tl.sqrt(dist)  # fp64 sqrt is IEEE round-to-nearest
        else:
            dist = tl.sqrt_rn(dist)  # tl.sqrt on fp32 may be approximate
    elif METRIC == 2:
        dist = dist * 0.5  # 1 - cos == |x^ - y^|^2 / 2 (rows pre-normalised)
    return dist


@triton.jit
def _store(
    out_ptr, out_off, r0, c0, dist, n, m, ld, SYM: tl.constexpr, CONDENSED: tl.constexpr,
    BM: tl.constexpr,
):  # fmt: skip
    """Write the BM x BM tile at (r0, c0) (and its mirror when SYM) into a square or condensed output.

    Addressing: one int64 base pointer per tile (scalar) plus int32 in-tile offsets (< BM * n, so
    n < 2^24 -- far beyond any matrix that fits in memory), not a BM x BM tensor of int64 indices:
    the epilogue's register pressure (linkage.md: the fp32 configs spilled) drops accordingly."""
    rl = tl.arange(0, BM)
    rows = r0 + rl
    cols = c0 + rl
    r = rows[:, None]
    c = cols[None, :]
    val = dist.to(out_ptr.dtype.element_ty)
    r064 = r0.to(tl.int64)
    c064 = c0.to(tl.int64)
    if SYM:
        upper = (r < c) & (c < n)
        if CONDENSED:
            # idx(r, c) = r n - r (r + 1) / 2 + (c - r - 1); relative to idx(r0, c0), with r = r0 + i,
            # c = c0 + j: i (n - r0 - 1) - i (i + 1) / 2 + j.
            base = out_ptr + out_off + (r064 * n - r064 * (r064 + 1) // 2 + (c064 - r064 - 1))
            off = (rl * (n - r0 - 1) - rl * (rl + 1) // 2)[:, None] + rl[None, :]
            tl.store(base + off, val, mask=upper)
        else:
            diag = (r == c) & (c < n)
            off = rl[:, None] * ld + rl[None, :]
            tl.store(
                out_ptr + out_off + (r064 * ld + c064) + off,
                tl.where(diag, 0.0, val),
                mask=upper | diag,
            )
            tl.store(
                out_ptr + out_off + (c064 * ld + r064) + (rl[None, :] * ld + rl[:, None]),
                val,
                mask=upper,
            )
    else:
        off = rl[:, None] * ld + rl[None, :]
        tl.store(out_ptr + out_off + (r064 * ld + c064) + off, val, mask=(r < n) & (c < m))


@triton.jit
def _direct_tile(
    xo_ptr,
    yo_ptr,
    sx_ptr,
    sy_ptr,
    rows,
    cols,
    rmask,
    cmask,
    d,
    SCALED: tl.constexpr,
    BM: tl.constexpr,
):
    """sum_k (x_ik - y_jk)^2 for a BM x BM tile by direct differences, float64 accumulation.

    One feature column per step (an outer-product difference): 2-D registers only. The difference
    of two nearby fp32 values is exact (Sterbenz), so near pairs keep full accuracy.
    """
    ro = rows.to(tl.int64) * d
    co = cols.to(tl.int64) * d
    acc = tl.zeros((BM, BM), dtype=tl.float64)
    if SCALED:
        sx = tl.load(sx_ptr + rows, mask=rmask, other=1.0)
        sy = tl.load(sy_ptr + cols, mask=cmask, other=1.0)
    for k in range(0, d):
        xk = tl.load(xo_ptr + ro + k, mask=rmask, other=0.0)
        yk = tl.load(yo_ptr + co + k, mask=cmask, other=0.0)
        if SCALED:
            # cosine: normalise on the fly in fp64 (x_k / |x| rounded to fp32 would cost accuracy)
            xs = xk.to(tl.float64) / sx
            ys = yk.to(tl.float64) / sy
            diff = xs[:, None] - ys[None, :]
            acc += diff * diff
        else:
            diff = xk[:, None] - yk[None, :]
            acc += diff.to(tl.float64) * diff.to(tl.float64)
    return acc


# --------------------------------------------------------------------------------------------------
# main kernel: one program per (group, ti, tj) tile
# --------------------------------------------------------------------------------------------------
# Row counts are not specialised (one compiled variant serves every n); d and ld are, so rows of
# 16-multiple length get vectorised loads and stores.
@triton.jit(do_not_specialize=["n", "m", "cap"])
def _distance_kernel(
    xc_ptr,  # centred (and, for cosine, normalised) rows, compute dtype, row-major, stride d
    yc_ptr,
    nx_ptr,  # |xc_i|^2, compute dtype
    ny_ptr,
    xo_ptr,  # original rows (compute dtype), for direct differences
    yo_ptr,
    sx_ptr,  # fp64 |x_i| (cosine only; 1 for zero rows)
    sy_ptr,
    out_ptr,
    tiles_ptr,  # ragged: int32 (T, 3) = (group, ti, tj)
    groups_ptr,  # ragged: int64 (G, 5) = (elem_off, row_off, n, d, out_off)
    near_ptr,  # int32 (cap, 3) = (group, i, j) of pairs to repair
    count_ptr,  # int64 (1,) number of pairs flagged (may exceed cap: the launcher then retries)
    n,
    m,
    d,
    ld,
    cap,
    ratio,
    METRIC: tl.constexpr,
    MODE: tl.constexpr,
    PREC: tl.constexpr,
    SYM: tl.constexpr,
    CONDENSED: tl.constexpr,
    RAGGED: tl.constexpr,
    SCALED: tl.constexpr,
    BM: tl.constexpr,
    BK: tl.constexpr,
):
    pid = tl.program_id(0)
    g = 0
    elem_off = 0
    row_off = 0
    out_off = 0
    if RAGGED:
        g = tl.load(tiles_ptr + 3 * pid)
        ti = tl.load(tiles_ptr + 3 * pid + 1)
        tj = tl.load(tiles_ptr + 3 * pid + 2)
        elem_off, row_off, gn, gd, out_off = _group_row(groups_ptr, g)
        n = gn.to(tl.int32)
        d = gd.to(tl.int32)
        m = n
        ld = n
    elif SYM:
        ti, tj = _tri_tile(pid)
    else:
        n_tj = tl.cdiv(m, BM)
        ti = pid // n_tj
        tj = pid % n_tj

    rows = ti * BM + tl.arange(0, BM)
    cols = tj * BM + tl.arange(0, BM)
    rmask = rows < n
    cmask = cols < m
    xo = xo_ptr + elem_off
    yo = yo_ptr + elem_off if SYM else yo_ptr
    sx = sx_ptr + row_off
    sy = sy_ptr + row_off if SYM else sy_ptr

    if MODE == 1:
        dist = _direct_tile(xo, yo, sx, sy, rows, cols, rmask, cmask, d, SCALED, BM)
    else:
        # ---- expansion on centred rows: acc = xc_i . yc_j over K chunks of BK ----
        xc = xc_ptr + elem_off
        yc = yc_ptr + elem_off if SYM else yc_ptr
        ro = rows.to(tl.int64)[:, None] * d
        co = cols.to(tl.int64)[:, None] * d
        ks = tl.arange(0, BK)[None, :]
        acc = tl.zeros((BM, BM), dtype=xc_ptr.dtype.element_ty)
        for k0 in range(0, d, BK):
            kmask = (k0 + ks) < d
            a = tl.load(xc + ro + k0 + ks, mask=rmask[:, None] & kmask, other=0.0)
            b = tl.load(yc + co + k0 + ks, mask=cmask[:, None] & kmask, other=0.0)
            # out_dtype explicit: Triton 3.6 defaults it to fp32 and rejects an fp64 accumulator.
            acc = tl.dot(a, tl.trans(b), acc, input_precision=PREC, out_dtype=acc.dtype)
        nxv = tl.load(nx_ptr + row_off + rows, mask=rmask, other=0.0)
        nyv = tl.load((ny_ptr + row_off if SYM else ny_ptr) + cols, mask=cmask, other=0.0)
        scale = nxv[:, None] + nyv[None, :]
        dist = scale - 2.0 * acc
        # ---- flag near pairs (cancellation) for the exact repair kernel ----
        valid = rmask[:, None] & cmask[None, :]
        if SYM:
            valid = valid & (rows[:, None] < cols[None, :])
        near = valid & (dist <= ratio * scale)
        near_i = near.to(tl.int32)
        cnt = tl.sum(tl.sum(near_i, axis=1), axis=0)
        if cnt > 0:
            # The counter is int64: it counts every flagged pair, also past the list's end (the
            # launcher then retries with room for all), and n(n-1)/2 exceeds int32 above n = 65,536.
            base = tl.atomic_add(count_ptr, cnt.to(tl.int64))
            # Deterministic in-tile compaction: row offsets + position within the row. In-tile
            # offsets are int32 (< BM^2); only the tile's base is int64.
            row_cnt = tl.sum(near_i, axis=1)
            row_start = tl.cumsum(row_cnt, axis=0) - row_cnt
            off = row_start[:, None] + tl.cumsum(near_i, axis=1) - near_i
            room = tl.minimum(tl.maximum(cap - base, 0), BM * BM).to(tl.int32)
            ok = near & (off < room)
            p = near_ptr + 3 * base + 3 * off
            tl.store(p, tl.zeros((BM, BM), dtype=tl.int32) + g, mask=ok)
            tl.store(p + 1, tl.zeros((BM, BM), dtype=tl.int32) + rows[:, None], mask=ok)
            tl.store(p + 2, tl.zeros((BM, BM), dtype=tl.int32) + cols[None, :], mask=ok)

    dist = _finish(dist, METRIC)
    _store(out_ptr, out_off, ti * BM, tj * BM, dist, n, m, ld, SYM, CONDENSED, BM)


# --------------------------------------------------------------------------------------------------
# repair kernel: exact direct differences for the flagged pairs only
# --------------------------------------------------------------------------------------------------
# Row counts are not specialised (one compiled variant serves every n); d and ld are, so rows of
# 16-multiple length get vectorised loads and stores.
@triton.jit(do_not_specialize=["n_pairs", "n", "m"])
def _repair_kernel(
    xo_ptr,
    yo_ptr,
    sx_ptr,
    sy_ptr,
    out_ptr,
    groups_ptr,
    near_ptr,
    n_pairs,
    n,
    m,
    d,
    ld,
    METRIC: tl.constexpr,
    SYM: tl.constexpr,
    CONDENSED: tl.constexpr,
    RAGGED: tl.constexpr,
    SCALED: tl.constexpr,
    BP: tl.constexpr,
    BK: tl.constexpr,
):
    pid = tl.program_id(0)
    ps = pid * BP + tl.arange(0, BP)
    pmask = ps < n_pairs
    p64 = ps.to(tl.int64) * 3
    g = tl.load(near_ptr + p64, mask=pmask, other=0)
    i = tl.load(near_ptr + p64 + 1, mask=pmask, other=0)
    j = tl.load(near_ptr + p64 + 2, mask=pmask, other=0)
    if RAGGED:
        gp = groups_ptr + 5 * g.to(tl.int64)
        elem_off = tl.load(gp, mask=pmask, other=0)
        row_off = tl.load(gp + 1, mask=pmask, other=0)
        nn = tl.load(gp + 2, mask=pmask, other=0)
        dd = tl.load(gp + 3, mask=pmask, other=0)
        out_off = tl.load(gp + 4, mask=pmask, other=0)
        xrow = elem_off + i.to(tl.int64) * dd
        yrow = elem_off + j.to(tl.int64) * dd
        si = row_off + i
        sj = row_off + j
        dmax = tl.max(tl.where(pmask, dd, 0), axis=0)
    else:
        nn = n + tl.zeros((BP,), dtype=tl.int64)
        dd = d + tl.zeros((BP,), dtype=tl.int64)
        out_off = tl.zeros((BP,), dtype=tl.int64)
        xrow = i.to(tl.int64) * d
        yrow = j.to(tl.int64) * d
        si = i
        sj = j
        dmax = d
    ks = tl.arange(0, BK)[None, :]
    acc = tl.zeros((BP,), dtype=tl.float64)
    if SCALED:
        sxv = tl.load(sx_ptr + si, mask=pmask, other=1.0)[:, None]
        syv = tl.load(sy_ptr + sj, mask=pmask, other=1.0)[:, None]
    for k0 in range(0, dmax, BK):
        km = pmask[:, None] & ((k0 + ks) < dd[:, None])
        a = tl.load(xo_ptr + xrow[:, None] + k0 + ks, mask=km, other=0.0)
        b = tl.load(yo_ptr + yrow[:, None] + k0 + ks, mask=km, other=0.0)
        if SCALED:
            diff = a.to(tl.float64) / sxv - b.to(tl.float64) / syv
        else:
            diff = (a - b).to(tl.float64)
        acc += tl.sum(diff * diff, axis=1)
    dist = _finish(acc, METRIC).to(out_ptr.dtype.element_ty)
    i64 = i.to(tl.int64)
    j64 = j.to(tl.int64)
    if SYM:
        if CONDENSED:
            idx = i64 * nn - i64 * (i64 + 1) // 2 + (j64 - i64 - 1)
            tl.store(out_ptr + out_off + idx, dist, mask=pmask)
        else:
            ldv = nn if RAGGED else ld + tl.zeros((BP,), dtype=tl.int64)
            tl.store(out_ptr + out_off + i64 * ldv + j64, dist, mask=pmask)
            tl.store(out_ptr + out_off + j64 * ldv + i64, dist, mask=pmask)
    else:
        tl.store(out_ptr + i64 * ld + j64, dist, mask=pmask)


# --------------------------------------------------------------------------------------------------
# launcher
# --------------------------------------------------------------------------------------------------
def _compute_dtype(dtype: torch.dtype, precision: str, out_dtype: torch.dtype) -> torch.dtype:
    """fp64 when the input or the requested output is fp64 (a float64 result promises ~1e-12, e.g.
    for linkage heights compared with scipy), except in the opt-in fast mode; else fp32."""
    wide = dtype == torch.float64 or out_dtype == torch.float64
    return torch.float64 if (wide and precision == "exact") else torch.float32


# --------------------------------------------------------------------------------------------------
# prep kernels: row norms (cosine), column means, centring + squared norms, in one pass each
# --------------------------------------------------------------------------------------------------
# Every matrix (x, y, or a ragged group) lives in one flat buffer; a group table holds, per matrix,
# (elem_off, row_off, n, d, col_off). Work is O(n d) in float64 (CUDA cores), fused so that the
# normalised and centred copies are never materialised in float64: one read of the input per kernel.
PREP_BR, PREP_BK = 32, 64


@triton.jit
def _prep_block(blocks_ptr, groups_ptr):
    """This program's (group, block) entry of a prep launch, with the group's table row:
    (block, elem_off, row_off, n, d, col_off)."""
    pid = tl.program_id(0)
    g = tl.load(blocks_ptr + 2 * pid)
    eoff, roff, n, d, coff = _group_row(groups_ptr, g)
    return tl.load(blocks_ptr + 2 * pid + 1), eoff, roff, n, d, coff


@triton.jit
def _rownorm_kernel(x_ptr, nrm_ptr, blocks_ptr, groups_ptr, BR: tl.constexpr, BK: tl.constexpr):
    """|x_i| in fp64 (1 for an all-zero row, which then stays zero), one row block per program."""
    rb, eoff, roff, n, d, _ = _prep_block(blocks_ptr, groups_ptr)
    rows = rb * BR + tl.arange(0, BR)
    rm = rows < n
    ro = eoff + rows.to(tl.int64)[:, None] * d
    ks = tl.arange(0, BK)[None, :]
    acc = tl.zeros((BR,), dtype=tl.float64)
    for k0 in range(0, d, BK):
        v = tl.load(x_ptr + ro + k0 + ks, mask=rm[:, None] & (k0 + ks < d), other=0.0)
        v = v.to(tl.float64)
        acc += tl.sum(v * v, axis=1)
    nrm = tl.sqrt(acc)
    tl.store(nrm_ptr + roff + rows, tl.where(nrm > 0, nrm, 1.0), mask=rm)


@triton.jit
def _colmean_kernel(
    x_ptr, nrm_ptr, mu_ptr, blocks_ptr, groups_ptr, SCALED: tl.constexpr, BR: tl.constexpr,
    BC: tl.constexpr,
):  # fmt: skip
    """Column means (of the normalised rows when SCALED) in fp64, one column block per program.

    A fixed loop over row chunks (no atomics): the centre, hence every result, is reproducible."""
    cb, eoff, roff, n, d, coff = _prep_block(blocks_ptr, groups_ptr)
    cols = cb * BC + tl.arange(0, BC)
    cm = cols < d
    acc = tl.zeros((BC,), dtype=tl.float64)
    for r0 in range(0, n, BR):
        rows = r0 + tl.arange(0, BR)
        rm = rows < n
        v = tl.load(
            x_ptr + eoff + rows.to(tl.int64)[:, None] * d + cols[None, :],
            mask=rm[:, None] & cm[None, :],
            other=0.0,
        ).to(tl.float64)
        if SCALED:
            v = v / tl.load(nrm_ptr + roff + rows, mask=rm, other=1.0)[:, None]
        acc += tl.sum(v, axis=0)
    tl.store(mu_ptr + coff + cols, acc / n.to(tl.float64), mask=cm)


@triton.jit
def _centre_kernel(
    x_ptr, nrm_ptr, mu_ptr, cent_ptr, sq_ptr, blocks_ptr, groups_ptr, SCALED: tl.constexpr,
    BR: tl.constexpr, BK: tl.constexpr,
):  # fmt: skip
    """cent = x (/ |x| when SCALED) - mu, rounded to the compute dtype, and |cent|^2 (from fp64)."""
    rb, eoff, roff, n, d, coff = _prep_block(blocks_ptr, groups_ptr)
    rows = rb * BR + tl.arange(0, BR)
    rm = rows < n
    ro = eoff + rows.to(tl.int64)[:, None] * d
    ks = tl.arange(0, BK)[None, :]
    if SCALED:
        nrm = tl.load(nrm_ptr + roff + rows, mask=rm, other=1.0)[:, None]
    acc = tl.zeros((BR,), dtype=tl.float64)
    for k0 in range(0, d, BK):
        km = (k0 + ks) < d
        m = rm[:, None] & km
        v = tl.load(x_ptr + ro + k0 + ks, mask=m, other=0.0).to(tl.float64)
        if SCALED:
            v = v / nrm
        c = v - tl.load(mu_ptr + coff + k0 + ks, mask=km, other=0.0)
        c = tl.where(m, c, 0.0)
        tl.store(cent_ptr + ro + k0 + ks, c.to(cent_ptr.dtype.element_ty), mask=m)
        acc += tl.sum(c * c, axis=1)
    tl.store(sq_ptr + roff + rows, acc.to(sq_ptr.dtype.element_ty), mask=rm)


def _prep(
    flat: torch.Tensor,
    shapes: list[tuple[int, int]],
    cdt: torch.dtype,
    metric: str,
    need_centred: bool,
    joint: bool,
):
    """Prepare the matrices packed in ``flat`` (row-major, back to back) for the distance kernels.

    Returns ``(orig, nrm, cent, sq)``: ``orig`` the inputs in the compute dtype (flat), ``nrm`` the
    fp64 row norms (cosine; else ones), ``cent`` the centred (normalised, for cosine) rows in the
    compute dtype (flat), ``sq`` their squared norms. ``joint``: one centre for all matrices (x and y
    of one call), else one per matrix (ragged groups). Centring and normalisation run in fp64, so
    they add no error beyond the final rounding to ``cdt``.
    """
    dev = flat.device
    r_tot = sum(n for n, _ in shapes)
    ginfo, rblocks, cblocks, e, r, c = [], [], [], 0, 0, 0
    for g, (n, d) in enumerate(shapes):
        ginfo.append([e, r, n, d, c])
        rblocks += [[g, b] for b in range(triton.cdiv(n, PREP_BR))]
        cblocks += [[g, b] for b in range(triton.cdiv(d, PREP_BK))]
        e, r, c = e + n * d, r + n, c + d
    groups = torch.tensor(ginfo, dtype=torch.int64, device=dev)
    rb = torch.tensor(rblocks, dtype=torch.int32, device=dev)
    orig = flat.to(cdt).contiguous()
    scaled = metric == "cosine"
    nrm = torch.ones(r_tot, dtype=torch.float64, device=dev)
    if scaled:
        _rownorm_kernel[(len(rblocks),)](flat, nrm, rb, groups, BR=PREP_BR, BK=PREP_BK)
    if not need_centred:
        return orig, nrm, orig, torch.zeros(r_tot, dtype=cdt, device=dev)
    mu = torch.empty(c, dtype=torch.float64, device=dev)
    cb = torch.tensor(cblocks, dtype=torch.int32, device=dev)
    _colmean_kernel[(len(cblocks),)](
        flat, nrm, mu, cb, groups, SCALED=scaled, BR=PREP_BR, BC=PREP_BK
    )  # fmt: skip
    if joint and len(shapes) > 1:
        d = shapes[0][1]
        w = torch.tensor([float(n) for n, _ in shapes], dtype=torch.float64, device=dev)
        m = (mu.view(len(shapes), d) * w[:, None]).sum(0) / w.sum()
        mu = m.repeat(len(shapes))
    cent = torch.empty(e, dtype=cdt, device=dev)
    sq = torch.empty(r_tot, dtype=cdt, device=dev)
    _centre_kernel[(len(rblocks),)](
        flat, nrm, mu, cent, sq, rb, groups, SCALED=scaled, BR=PREP_BR, BK=PREP_BK
    )  # fmt: skip
    return orig, nrm, cent, sq


def _config(cdt: torch.dtype, d: int):
    mode = MODE_DIRECT if d <= DIRECT_MAX_D else MODE_EXPAND
    return mode, CONFIGS[(cdt, mode)]


def _prec(cdt: torch.dtype, precision: str) -> str:
    if cdt == torch.float64:
        return "ieee"
    return "tf32x3" if precision == "exact" else "tf32"


def _new_stats(stats: dict[str, int] | None) -> dict[str, int]:
    """The caller's stats dict, cleared (or a throwaway one): what one call does is counted afresh."""
    if stats is None:
        return {}
    stats.clear()
    return stats


# The tile kernel addresses its output with int32 in-tile offsets (< BM * n): rows up to 2^24.
MAX_ROWS = 2**24


def _check_rows(n: int) -> None:
    if n >= MAX_ROWS:
        raise ValueError(
            f"pairwise_distance (triton): {n} rows; at most {MAX_ROWS - 1} are supported (int32 "
            f"in-tile offsets; the result alone would need {n * n * 4 / 2**40:.0f} TiB)"
        )


def _retry_cap(flagged: int) -> int:
    """Capacity of the near-pair list for the second launch: every pair the first one flagged."""
    return flagged


def _check_repair_pairs(flagged: int, metric: str, cdt: torch.dtype) -> None:
    """Refuse a near-pair list longer than MAX_REPAIR_PAIRS (the kernel's int32 cap)."""
    if flagged > MAX_REPAIR_PAIRS:
        raise RuntimeError(
            f"pairwise_distance (triton): {flagged} pairs were flagged for the exact near-pair "
            f"repair, more than the limit of {MAX_REPAIR_PAIRS} ({12 * flagged / 2**30:.1f} GiB of "
            f"list); the {metric} distances of these rows are clustered so tightly that the "
            f"expansion cancels for most pairs: use backend='cuda' (direct differences, no list)"
            + (
                ", or out_dtype=torch.float64 (repairs far fewer pairs)"
                if cdt != torch.float64
                else ""
            )
        )


def _run(
    xc, yc, nx, ny, xo, yo, sx, sy, out, tiles, groups, grid, n, m, d, ld, cdt, mode, cfg, metric,
    sym, condensed, ragged, precision, total_rows, stats,
):  # fmt: skip
    """Launch the tile kernel, then repair the flagged pairs (retrying once if the list overflowed).

    Adds to ``stats``: ``mode`` (the kernel mode, MODE_EXPAND or MODE_DIRECT; the last launch's),
    ``launches`` (tile-kernel launches: 2 when the near-pair list overflowed and the launch was
    repeated) and ``flagged`` (pairs flagged for the exact repair).

    Raises ``RuntimeError`` (and never launches the repair past the near-pair list's end) when more
    than ``MAX_REPAIR_PAIRS`` pairs are flagged, or when the retry overflows as well."""
    bm, bk, warps, stages = cfg
    dev = out.device
    scaled = metric == "cosine"
    # Room for a few near pairs per row: enough for near-duplicate sets; clustered data may overflow
    # once (then the launch is repeated with the exact count).
    cap = 0 if mode == MODE_DIRECT else min(max(MIN_REPAIR_CAP, 8 * total_rows), MAX_REPAIR_PAIRS)
    stats["mode"] = mode
    stats.setdefault("flagged", 0)
    for _ in range(2):
        stats["launches"] = stats.get("launches", 0) + 1
        near = torch.empty((max(cap, 1), 3), dtype=torch.int32, device=dev)
        count = torch.zeros(1, dtype=torch.int64, device=dev)
        _distance_kernel[(grid,)](
            xc, yc, nx, ny, xo, yo, sx, sy, out, tiles, groups, near, count,
            n, m, d, ld, cap, REPAIR_RATIO[cdt],
            METRIC=METRIC_CODE[metric], MODE=mode, PREC=_prec(cdt, precision), SYM=sym,
            CONDENSED=condensed, RAGGED=ragged, SCALED=scaled, BM=bm, BK=bk,
            num_warps=warps, num_stages=stages,
        )  # fmt: skip
        if mode == MODE_DIRECT:
            return out
        flagged = int(count.item())
        if flagged <= cap:
            break
        _check_repair_pairs(flagged, metric, cdt)
        # rare (e.g. strongly clustered data): rerun with room for every pair
        cap = _retry_cap(flagged)
    else:
        # The counts of both launches differ (they should not: the same data, the same arithmetic).
        # Never launch the repair past the list's end: a pair left unrepaired would be silently wrong.
        raise RuntimeError(
            f"pairwise_distance (triton): the near-pair list overflowed again on the retry "
            f"({flagged} pairs flagged, room for {cap}); the exact repair was not run"
        )
    stats["flagged"] += flagged
    if flagged:
        _repair_kernel[(triton.cdiv(flagged, REPAIR_BP),)](
            xo, yo, sx, sy, out, groups, near, flagged, n, m, d, ld,
            METRIC=METRIC_CODE[metric], SYM=sym, CONDENSED=condensed, RAGGED=ragged,
            SCALED=scaled, BP=REPAIR_BP, BK=REPAIR_BK, num_warps=REPAIR_WARPS,
        )  # fmt: skip
    return out


def pairwise_distance_triton(
    x: torch.Tensor,
    y: torch.Tensor | None,
    metric: str,
    condensed: bool,
    out_dtype: torch.dtype | None,
    precision: str = "exact",
    *,
    out: torch.Tensor | None = None,
    stats: dict[str, int] | None = None,
) -> torch.Tensor:
    """Triton implementation of ``simprune.pairwise_distance`` (inputs already validated).

    ``out`` (optional, for tests): a preallocated result buffer of the right shape and dtype.
    ``stats`` (optional, for tests and benchmarks): a dict, cleared and then filled with what the call
    did -- ``mode`` (MODE_EXPAND or MODE_DIRECT), ``launches`` (tile-kernel launches; 2 when the
    near-pair list overflowed) and ``flagged`` (pairs recomputed by the exact repair). Left empty when
    there is nothing to compute.
    """
    stats = _new_stats(stats)
    n, d = x.shape
    out_dtype = out_dtype or torch.promote_types(x.dtype, torch.float32)
    in_dtype = x.dtype if y is None else torch.promote_types(x.dtype, y.dtype)
    cdt = _compute_dtype(in_dtype, precision, out_dtype)
    sym = y is None
    m = n if sym else y.shape[0]  # type: ignore[union-attr]
    shape = (n * (n - 1) // 2,) if condensed else (n, m)
    if out is None:
        out = torch.empty(shape, dtype=out_dtype, device=x.device)
    elif tuple(out.shape) != shape or out.dtype != out_dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {out_dtype} tensor of shape {shape}")
    if out.numel() == 0:
        return out
    _check_rows(max(n, m))
    mode, cfg = _config(cdt, d)
    if sym:
        flat, shapes = x.reshape(-1), [(n, d)]
    else:
        dt = torch.promote_types(x.dtype, y.dtype)  # type: ignore[union-attr]
        flat = torch.cat([x.reshape(-1).to(dt), y.reshape(-1).to(dt)])  # type: ignore[union-attr]
        shapes = [(n, d), (m, d)]
    orig, nrm, cent, sq = _prep(flat, shapes, cdt, metric, mode == MODE_EXPAND, True)
    # y's rows follow x's in every prepared buffer.
    ye, yr = (0, 0) if sym else (n * d, n)
    bm = cfg[0]
    t_n, t_m = triton.cdiv(n, bm), triton.cdiv(m, bm)
    grid = t_n * (t_n + 1) // 2 if sym else t_n * t_m
    dummy = torch.zeros(1, dtype=torch.int64, device=x.device)
    return _run(
        cent, cent[ye:], sq, sq[yr:], orig, orig[ye:], nrm, nrm[yr:], out,
        dummy, dummy, grid, n, m, d, m, cdt, mode, cfg, metric, sym, condensed, False, precision,
        n + (0 if sym else m), stats,
    )  # fmt: skip


def ragged_out_sizes(rows: list[int], condensed: bool) -> list[int]:
    return [r * (r - 1) // 2 if condensed else r * r for r in rows]


def pairwise_distance_ragged_triton(
    packed: torch.Tensor,
    rows: list[int],
    cols: list[int],
    metric: str,
    condensed: bool,
    out_dtype: torch.dtype | None,
    precision: str = "exact",
    *,
    out: torch.Tensor | None = None,
    stats: dict[str, int] | None = None,
) -> torch.Tensor:
    """Distances of many groups in one launch.

    ``packed`` is the flat concatenation of every group's row-major (rows[g], cols[g]) matrix. The
    result is the flat concatenation of every group's condensed vector (or flattened square matrix).
    Groups are split by feature count: those with d <= DIRECT_MAX_D go to one direct-difference
    launch, the others to one expansion launch (two launches at most). ``stats``: as for
    ``pairwise_distance_triton``, summed over both launches (``mode``: the last one's).
    """
    stats = _new_stats(stats)
    dev = packed.device
    out_dtype = out_dtype or torch.promote_types(packed.dtype, torch.float32)
    cdt = _compute_dtype(packed.dtype, precision, out_dtype)
    sizes = ragged_out_sizes(rows, condensed)
    total = sum(sizes)
    if out is None:
        out = torch.empty((total,), dtype=out_dtype, device=dev)
    elif tuple(out.shape) != (total,) or out.dtype != out_dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {out_dtype} tensor of shape ({total},)")
    if total == 0:  # no groups, or only single-row groups in condensed form
        return out
    _check_rows(max(rows))
    modes = [_config(cdt, c)[0] for c in cols]
    need_centred = any(mo == MODE_EXPAND and sz > 0 for mo, sz in zip(modes, sizes, strict=True))
    shapes = list(zip(rows, cols, strict=True))
    orig, nrm, cent, sq = _prep(packed.reshape(-1), shapes, cdt, metric, need_centred, False)
    # Global group table of the distance kernels: (elem_off, row_off, n, d, out_off).
    ginfo, e, r, o = [], 0, 0, 0
    for (n, d), size in zip(shapes, sizes, strict=True):
        ginfo.append([e, r, n, d, o])
        e, r, o = e + n * d, r + n, o + size
    groups_t = torch.tensor(ginfo, dtype=torch.int64, device=dev)
    for mode in (MODE_DIRECT, MODE_EXPAND):
        sel = [g for g in range(len(rows)) if sizes[g] > 0 and modes[g] == mode]
        if not sel:
            continue
        cfg = CONFIGS[(cdt, mode)]
        bm = cfg[0]
        tiles = []
        for g in sel:
            t = triton.cdiv(rows[g], bm)
            iu = torch.triu_indices(t, t)
            tiles.append(torch.stack([torch.full_like(iu[0], g), iu[0], iu[1]], 1))
        tiles_t = torch.cat(tiles).to(device=dev, dtype=torch.int32).contiguous()
        _run(
            cent, cent, sq, sq, orig, orig, nrm, nrm, out, tiles_t, groups_t, tiles_t.shape[0],
            0, 0, 0, 0, cdt, mode, cfg, metric, True, condensed, True, precision,
            sum(rows[g] for g in sel), stats,
        )  # fmt: skip
    return out
