"""The round-synchronous (reciprocal-nearest-neighbour rounds) CPU twin of the GPU linkage
(linkage.md 7.3), with scipy as the oracle: the GPU algorithm's logic, verified without a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.cluster.hierarchy as sch
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from simprune.backends import has_kernel
from simprune.hierarchy import linkage_rounds
from tests.test_linkage_cpu import (
    ALL_CASES,
    REDUCIBLE,
    TIE_FREE,
    accepted_by_scipy,
    assert_bitwise,
    assert_same_partitions,
    assert_same_tree,
    assert_valid_hac,
    condensed,
    data,
    scipy_z,
)

pytestmark = pytest.mark.skipif(
    not has_kernel("linkage_rounds_cpu", "CPU"),
    reason="simprune._C has no linkage_rounds_cpu kernel (extension not built, or compiled with a "
    "C++ standard older than C++20, which torch's headers need)",
)


def rounds(d, method):
    z, stats = linkage_rounds(torch.as_tensor(d), method)
    assert z.dtype == torch.float64 and stats.dtype == torch.int64 and stats.shape == (3,)
    n = z.shape[0] + 1
    r, compactions, widest = stats.tolist()
    if n > 1:
        assert 1 <= r <= n - 1 and 1 <= widest <= n // 2 and compactions >= 0
    return z.numpy(), stats


# Single linkage and the 1-D chain need many rounds (n/2 and more, linkage.md 7.2): at n = 1000 they
# cost seconds here, so they run at n <= 300 (the chain's worst case has its own test below).
TIE_FREE_CASES = [
    (s, n, method)
    for s, n in ALL_CASES + [(s, 300) for s in TIE_FREE]
    if s in TIE_FREE
    for method in REDUCIBLE
    if n < 1000 or (method != "single" and s != "chain_1d")
]


@pytest.mark.parametrize("name,n,method", TIE_FREE_CASES)
def test_tie_free_same_tree(name, n, method):
    z, _ = rounds(data(name, n), method)
    assert_same_tree(z, scipy_z(name, n, method), method)
    accepted_by_scipy(z, n)


@pytest.mark.parametrize("method", REDUCIBLE)
@pytest.mark.parametrize("n", [31, 1000])
def test_zero_height_ties_same_partitions(n, method):
    z, _ = rounds(data("dead_duplicate", n), method)
    assert_same_partitions(z, scipy_z("dead_duplicate", n, method))


@pytest.mark.parametrize("method", REDUCIBLE)
@pytest.mark.parametrize("n", [31, 300])
def test_massive_ties_valid(n, method):
    d = data("quantised", n)
    z, _ = rounds(d, method)
    assert_valid_hac(z, d, method)
    if method == "single":
        zs = scipy_z("quantised", n, method)
        np.testing.assert_array_equal(np.sort(z[:, 2]), np.sort(zs[:, 2]))


@pytest.mark.parametrize("name,method", [("gaussian", "average"), ("channel_like", "ward")])
def test_n4097(name, method):
    d = data(name, 4097)
    z, stats = rounds(d, method)
    assert_same_tree(z, sch.linkage(d, method), method)
    assert stats[1] >= 1  # the active count halved at least once: compaction ran


def test_chain_is_the_worst_case():
    # Gaps growing along a line: only the closest end pair is reciprocal at first, so about n/2
    # rounds (linkage.md 7.2).
    n = 1000
    z, stats = rounds(data("chain_1d", n), "complete")
    assert stats[0] >= n // 2 - 1
    assert_same_tree(z, scipy_z("chain_1d", n, "complete"), "complete")


@pytest.mark.parametrize("method", REDUCIBLE)
def test_thread_count_does_not_change_the_result(method, monkeypatch):
    monkeypatch.setenv("SIMPRUNE_LINKAGE_PARALLEL_MIN_N", "16")  # parallel loops from 16^2 elements
    d = data("quantised", 700)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        z1, s1 = rounds(d, method)
        torch.set_num_threads(2)
        z2, s2 = rounds(d, method)
    finally:
        torch.set_num_threads(before)
    assert_bitwise(z1, z2)
    assert s1.tolist() == s2.tolist()


def test_float32_input():
    d = data("gaussian", 200)
    z, _ = rounds(torch.from_numpy(d.astype(np.float32)), "average")
    zs = sch.linkage(d.astype(np.float32).astype(np.float64), "average")
    assert_same_tree(z, zs, "average")


def test_small_and_bad_input():
    z, stats = rounds(torch.zeros(0, dtype=torch.float64), "average")
    assert z.shape == (0, 4) and stats.tolist() == [0, 0, 0]
    z, _ = rounds(torch.tensor([2.5], dtype=torch.float64), "ward")
    assert z.tolist() == [[0.0, 1.0, 2.5, 2.0]]
    with pytest.raises(ValueError, match="NaN"):
        rounds(torch.tensor([1.0, float("nan"), 2.0]), "average")
    with pytest.raises(ValueError, match="non-negative"):
        rounds(torch.tensor([1.0, -1.0, 2.0]), "average")
    with pytest.raises(NotImplementedError, match="median"):
        rounds(torch.tensor([1.0, 1.0, 2.0]), "median")


def test_opcheck_linkage_rounds():
    d = torch.from_numpy(data("gaussian", 12))
    for method in REDUCIBLE:
        torch.library.opcheck(torch.ops.simprune.linkage_rounds_cpu, (d, method))


@settings(max_examples=150, deadline=None)
@given(case=condensed(), method=st.sampled_from(REDUCIBLE))
def test_property_valid_and_same_heights_as_scipy(case, method):
    d, euclidean = case
    assume(euclidean or method != "ward")
    z, _ = rounds(d, method)
    accepted_by_scipy(z, z.shape[0] + 1)
    assert_valid_hac(z, d, method)
