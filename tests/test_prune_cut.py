"""The cut solvers (global threshold with tie splitting, uniform ratio) as properties."""

from __future__ import annotations

import math

import numpy as np
import scipy.cluster.hierarchy as sch
from hypothesis import given, settings
from hypothesis import strategies as st

from simprune.pruning.budget import make_curve, solve_global, solve_uniform


def _curves(sizes, seed, dup_frac, min_keep_ratio=0.0, kpc=1):
    rng = np.random.default_rng(seed)
    curves = []
    for n in sizes:
        x = rng.normal(size=(n, 3))
        n_dup = int(dup_frac * n)
        if n_dup:
            x[:n_dup] = x[n - n_dup :]  # exact duplicates: zero-height ties
        z = sch.linkage(x, "average") if n > 1 else np.zeros((0, 4))
        curves.append(
            make_curve(z, 1.0, ch_groups=1, keep_per_cluster=kpc, min_keep_ratio=min_keep_ratio)
        )
    return curves


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 25), min_size=1, max_size=6),
    seed=st.integers(0, 1000),
    dup=st.sampled_from([0.0, 0.3, 0.5]),
    ratio=st.floats(0.0, 0.9),
)
def test_global_cut_hits_a_channel_target_to_one_channel(sizes, seed, dup, ratio):
    curves = _curves(sizes, seed, dup)
    total = sum(sizes)
    max_removable = sum(n - 1 for n in sizes)

    def cost(r):
        return total - float(np.sum(r))

    res = solve_global(curves, cost, (1 - ratio) * total)
    removed = total - sum(res.kept_units)
    want = min(ratio * total, max_removable)
    # Ties are split one merge at a time, so every channel count is reachable.
    assert abs(removed - want) <= 0.5 + 1e-9
    assert all(k >= 1 for k in res.kept_units)
    # Global threshold: a group cut deeper than t' never keeps a merge of height > t'.
    for c, m in zip(curves, res.merges, strict=True):
        if m and res.threshold is not None:
            assert c.heights[m - 1] <= res.threshold


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(2, 25), min_size=1, max_size=5),
    seed=st.integers(0, 1000),
    ratio=st.floats(0.0, 0.95),
    mkr=st.sampled_from([0.0, 0.1, 0.5]),
    kpc=st.sampled_from([1, 2]),
)
def test_guards_and_uniform_ratio(sizes, seed, ratio, mkr, kpc):
    curves = _curves(sizes, seed, 0.2, min_keep_ratio=mkr, kpc=kpc)
    res = solve_uniform(curves, lambda r: 0.0, None, ratio=ratio)
    for n, c, k, m in zip(sizes, curves, res.kept_units, res.merges, strict=True):
        floor = max(1, math.ceil(mkr * n - 1e-9))
        assert k >= floor
        want = n - round(ratio * n)
        # Uniform: exactly the ratio unless a guard or keep_per_cluster holds more back.
        assert k >= want
        if kpc == 1 and want >= floor:
            assert k == want
        assert k == c.kept(m)


def test_round_to_rounds_up_kept_channels():
    curves = _curves([30, 17], 0, 0.0)

    def cost(r):
        return 47 - float(np.sum(r))

    res = solve_global(curves, cost, 0.5 * 47, round_to=8)
    assert res.kept_units[0] % 8 == 0 and (res.kept_units[1] % 8 == 0 or res.kept_units[1] == 17)
