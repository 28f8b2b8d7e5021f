"""Choosing how many units each group keeps: one global scale-free threshold, or a uniform ratio.

Every group's dendrogram Z is computed once. Cutting it at height t applies the merges of height
<= t, so the number of units kept is a step function of t that is read off the sorted heights; the
bisection over t therefore never recomputes a distance or a linkage.

Scale-free heights (metric.md section 1): a group's heights are divided by the root-mean-square norm
of its descriptors, sqrt(mean channel energy). For the gaussian metric this is sqrt(D_ij / mean_k
E[y_k^2]): the root of the expected squared difference of two channels relative to the group's mean
signal energy, comparable across layers whatever their scale. Cosine heights are already scale-free.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class GroupCurve:
    """What a cut does to one group: units kept after the first m merges of Z."""

    n_units: int
    ch_groups: int
    heights: np.ndarray  # (n-1,) scale-free merge heights, non-decreasing
    kept_after: np.ndarray  # (n,) units kept after m merges (keep_per_cluster taken into account)
    min_kept: int  # guard: never keep fewer units

    def merges_at(self, t: float) -> int:
        return int(np.searchsorted(self.heights, t, side="right"))

    def clamp(self, m: int, round_to: int | None) -> int:
        """Merges actually applied: guards (min_kept, round_to) reduce m."""
        # Guard: the largest m' <= m whose kept count is still >= min_kept.
        ok = np.flatnonzero(self.kept_after[: m + 1] >= self.min_kept)
        m = int(ok[-1]) if ok.size else 0
        if round_to and round_to > 1:
            # Kept channels come in units of ch_groups: a multiple of round_to is one of the lcm.
            step = math.lcm(round_to, self.ch_groups)
            kept_ch = int(self.kept_after[m]) * self.ch_groups
            want = min(self.n_units * self.ch_groups, int(math.ceil(kept_ch / step)) * step)
            want_units = int(math.ceil(want / self.ch_groups))
            ok = np.flatnonzero(self.kept_after[: m + 1] >= want_units)
            m = int(ok[-1]) if ok.size else 0
        return m

    def kept(self, m: int) -> int:
        return int(self.kept_after[m])


def make_curve(
    z: np.ndarray,
    scale: float,
    *,
    ch_groups: int,
    keep_per_cluster: int,
    min_keep_ratio: float,
) -> GroupCurve:
    n = z.shape[0] + 1
    h = np.maximum.accumulate(z[:, 2]) / scale if n > 1 else np.zeros(0)
    kept = np.empty(n, dtype=np.int64)
    kept[0] = n
    if n > 1:
        size = np.ones(2 * n - 1, dtype=np.int64)
        size[n:] = z[:, 3].astype(np.int64)
        a = size[z[:, 0].astype(np.int64)]
        b = size[z[:, 1].astype(np.int64)]
        k = keep_per_cluster
        delta = np.minimum(a + b, k) - np.minimum(a, k) - np.minimum(b, k)
        kept[1:] = n + np.cumsum(delta)
    min_kept = max(1, int(math.ceil(min_keep_ratio * n - 1e-9)))
    return GroupCurve(n, ch_groups, h, kept, min(min_kept, n))


@dataclass
class CutResult:
    merges: list[int]  # per group: number of merges applied
    kept_units: list[int]
    threshold: float | None  # the global threshold (None for uniform)
    ratio: float | None  # the uniform ratio (None for global)
    cost: float  # the target quantity at this cut
    cost0: float  # ... with nothing pruned
    min_cost: float  # ... at the deepest cut the guards allow


def _removed_channels(curves: Sequence[GroupCurve], merges: Sequence[int]) -> np.ndarray:
    return np.array(
        [(c.n_units - c.kept(m)) * c.ch_groups for c, m in zip(curves, merges, strict=True)],
        dtype=np.float64,
    )


def solve_global(
    curves: Sequence[GroupCurve],
    cost: Callable[[np.ndarray], float],
    target: float,
    round_to: int | None = None,
) -> CutResult:
    """The threshold whose cost is closest to ``target`` (cost decreases as t grows).

    Bisection over the sorted candidate thresholds (every scale-free merge height): O(log M) cost
    evaluations, each O(layers).
    """
    cost0 = cost(np.zeros(len(curves)))
    cand = np.unique(np.concatenate([c.heights for c in curves] + [np.zeros(1)]))

    def at(t: float) -> tuple[list[int], float]:
        ms = [c.clamp(c.merges_at(t), round_to) for c in curves]
        return ms, cost(_removed_channels(curves, ms))

    lo, hi = -1, len(cand) - 1  # invariant: cost(cand[lo]) > target (lo=-1: no cut), else hi
    ms_hi, c_hi = at(float(cand[hi]))
    min_cost = c_hi
    if c_hi > target:
        kept = [c.kept(m) for c, m in zip(curves, ms_hi, strict=True)]
        return CutResult(ms_hi, kept, float(cand[hi]), None, c_hi, cost0, min_cost)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        ms, c = at(float(cand[mid]))
        if c > target:
            lo = mid
        else:
            hi, ms_hi, c_hi = mid, ms, c
    # The merges of height exactly cand[hi] are tied (cand holds the distinct heights): apply only as
    # many of them as the target needs, spread over the groups in proportion to their sizes, so that
    # ties (dead or duplicated channels, degenerate descriptors) do not make the cut coarse.
    raw_lo = [c.merges_at(float(cand[lo])) if lo >= 0 else 0 for c in curves]
    raw_hi = [c.merges_at(float(cand[hi])) for c in curves]
    pending = sorted(
        ((m + 1) / c.n_units, g) for g, c in enumerate(curves) for m in range(raw_lo[g], raw_hi[g])
    )
    order = np.array([g for _, g in pending], dtype=np.int64)

    def at_k(k: int) -> tuple[list[int], float]:
        counts = np.bincount(order[:k], minlength=len(curves))
        ms = [c.clamp(raw_lo[g] + int(counts[g]), round_to) for g, c in enumerate(curves)]
        return ms, cost(_removed_channels(curves, ms))

    klo, khi = 0, len(pending)  # cost(klo) >= target >= cost(khi)
    ms_lo, c_lo = at_k(klo)
    while khi - klo > 1:
        mid = (klo + khi) // 2
        ms, c = at_k(mid)
        if c > target:
            klo, ms_lo, c_lo = mid, ms, c
        else:
            khi, ms_hi, c_hi = mid, ms, c
    best_ms, best_c = (ms_lo, c_lo) if abs(c_lo - target) < abs(c_hi - target) else (ms_hi, c_hi)
    best_t = float(cand[hi])
    kept = [c.kept(m) for c, m in zip(curves, best_ms, strict=True)]
    return CutResult(best_ms, kept, best_t, None, best_c, cost0, min_cost)


def solve_uniform(
    curves: Sequence[GroupCurve],
    cost: Callable[[np.ndarray], float],
    target: float | None,
    ratio: float | None = None,
    round_to: int | None = None,
) -> CutResult:
    """Every group loses the same fraction q of its units (bisection on q when a cost is targeted)."""
    cost0 = cost(np.zeros(len(curves)))

    def at(q: float) -> tuple[list[int], float]:
        ms = []
        for c in curves:
            want = c.n_units - int(round(q * c.n_units))
            # Most merges that still keep >= `want` (kept_after is non-increasing; with
            # keep_per_cluster > 1 one merge can drop several units, never overshoot).
            idx = np.flatnonzero(c.kept_after >= want)
            m = int(idx[-1]) if idx.size else 0
            ms.append(c.clamp(m, round_to))
        return ms, cost(_removed_channels(curves, ms))

    min_cost = at(1.0)[1]
    if ratio is not None:
        ms, cst = at(ratio)
        kept = [c.kept(m) for c, m in zip(curves, ms, strict=True)]
        return CutResult(ms, kept, None, ratio, cst, cost0, min_cost)
    assert target is not None
    lo, hi = 0.0, 1.0
    best = (0.0, *at(0.0))
    for _ in range(40):
        mid = (lo + hi) / 2
        ms, cst = at(mid)
        if abs(cst - target) < abs(best[2] - target):
            best = (mid, ms, cst)
        if cst > target:
            lo = mid
        else:
            hi = mid
    q, ms, cst = best
    kept = [c.kept(m) for c, m in zip(curves, ms, strict=True)]
    return CutResult(ms, kept, None, q, cst, cost0, min_cost)
