"""The C++ CPU linkage (backend="cpu": NN-chain and MST), with scipy as the oracle (linkage.md 8.3).

Gates: strict mode bitwise equal to scipy on every data set, ties included; exact mode with the same
tree on tie-free data (heights rtol 1e-12, bitwise for single/complete), the same partitions at every
cut under zero-height ties, and a valid HAC under massive ties (brute-force checker).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.cluster.hierarchy as sch
import scipy.spatial.distance as ssd
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import simprune
from simprune.backends import has_kernel
from tests import datasets

HAS_CPU = has_kernel("linkage_cpu", "CPU")
needs_cpu = pytest.mark.skipif(
    not HAS_CPU,
    reason="simprune._C has no linkage_cpu kernel (extension not built, or compiled with a C++ "
    "standard older than C++20, which torch's headers need)",
)
pytestmark = needs_cpu

REDUCIBLE = ("single", "complete", "average", "weighted", "ward")
TIE_FREE = ("gaussian", "mixture", "channel_like", "chain_1d")


# ---------------------------------------------------------------------------------------------------
# Oracles (shared with test_linkage_rounds.py)


def assert_bitwise(z: np.ndarray, zs: np.ndarray) -> None:
    """Z bitwise equal to scipy's (the strict-mode gate)."""
    assert z.shape == zs.shape and z.dtype == zs.dtype == np.float64
    bad = np.flatnonzero(np.any(z.view(np.uint64) != zs.view(np.uint64), axis=1))
    assert bad.size == 0, f"{bad.size} rows differ; first row {bad[0]}: {z[bad[0]]} vs {zs[bad[0]]}"


def assert_same_tree(z: np.ndarray, zs: np.ndarray, method: str) -> None:
    """The tie-free gate: columns 0, 1, 3 identical, heights within rtol 1e-12 (bitwise for single
    and complete, which involve no arithmetic)."""
    np.testing.assert_array_equal(z[:, [0, 1, 3]], zs[:, [0, 1, 3]])
    if method in ("single", "complete"):
        np.testing.assert_array_equal(z[:, 2], zs[:, 2])
    else:
        np.testing.assert_allclose(z[:, 2], zs[:, 2], rtol=1e-12, atol=0)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two flat labelings group the observations identically (labels may differ)."""
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def assert_same_partitions(z: np.ndarray, zs: np.ndarray) -> None:
    """The zero-height-ties gate: identical sorted heights, and identical flat clusters at every
    number of clusters (a distance cut between each two consecutive distinct heights)."""
    np.testing.assert_allclose(np.sort(z[:, 2]), np.sort(zs[:, 2]), rtol=1e-12, atol=1e-13)
    h = np.unique(zs[:, 2])
    mids = (h[:-1] + h[1:]) / 2
    clear = (h[1:] - h[:-1]) > 1e-9 * h[1:]  # thresholds clear of rounding
    for t in mids[clear]:
        fa, fb = sch.fcluster(z, t, "distance"), sch.fcluster(zs, t, "distance")
        assert same_partition(fa, fb), f"partitions differ at threshold {t}"


def _lw(method, dxi, dyi, dxy, nx, ny, ni):
    if method == "single":
        return np.minimum(dxi, dyi)
    if method == "complete":
        return np.maximum(dxi, dyi)
    if method == "average":
        return (nx * dxi + ny * dyi) / (nx + ny)
    if method == "weighted":
        return 0.5 * (dxi + dyi)
    t = 1.0 / (nx + ny + ni)
    return np.sqrt((ni + nx) * t * dxi * dxi + (ni + ny) * t * dyi * dyi - ni * t * dxy * dxy)


def assert_valid_hac(z: np.ndarray, d: np.ndarray, method: str, rtol: float = 1e-9) -> None:
    """The massive-ties gate (brute force, small n): replaying Z's rows in order, every row merges
    two current clusters whose linkage value is minimal among all current pairs (so some tie choice
    of the textbook algorithm produces it) and equals the recorded height."""
    assert sch.is_valid_linkage(z)
    n = z.shape[0] + 1
    big = np.full((2 * n - 1, 2 * n - 1), np.inf)
    iu = np.triu_indices(n, 1)
    big[iu] = d
    big[iu[1], iu[0]] = d
    size = np.zeros(2 * n - 1)
    size[:n] = 1
    alive = np.zeros(2 * n - 1, dtype=bool)
    alive[:n] = True
    for r in range(n - 1):
        a, b, h = int(z[r, 0]), int(z[r, 1]), z[r, 2]
        assert alive[a] and alive[b], f"row {r} merges a cluster that no longer exists"
        act = np.flatnonzero(alive)
        best = big[np.ix_(act, act)].min()
        tol = rtol * best + 1e-13
        assert big[a, b] <= best + tol, f"row {r}: d({a},{b}) = {big[a, b]} > minimum {best}"
        assert abs(h - big[a, b]) <= tol, f"row {r}: height {h}, but d({a},{b}) = {big[a, b]}"
        o = act[(act != a) & (act != b)]
        new = _lw(method, big[a, o], big[b, o], big[a, b], size[a], size[b], size[o])
        big[n + r, o] = big[o, n + r] = new
        size[n + r] = size[a] + size[b]
        alive[[a, b]] = False
        alive[n + r] = True


def accepted_by_scipy(z: np.ndarray, n: int) -> None:
    """is_valid_linkage, fcluster and dendrogram accept the output."""
    assert sch.is_valid_linkage(z, throw=True)
    labels = sch.fcluster(z, min(3, n), "maxclust")
    assert labels.shape == (n,)
    if n <= 200:  # scipy's dendrogram recurses once per level (a 1-D chain is n levels deep)
        assert sorted(sch.dendrogram(z, no_plot=True)["leaves"]) == list(range(n))


# ---------------------------------------------------------------------------------------------------
# Data: condensed fp64 distances (scipy pdist), cached with scipy's Z, per (data set, n).

_CACHE: dict = {}


def data(name: str, n: int) -> np.ndarray:
    key = (name, n)
    if key not in _CACHE:
        _CACHE[key] = ssd.pdist(datasets.ALL[name](n))
    return _CACHE[key]


def scipy_z(name: str, n: int, method: str) -> np.ndarray:
    key = (name, n, method)
    if key not in _CACHE:
        _CACHE[key] = sch.linkage(data(name, n), method)
    return _CACHE[key]


def cpu(d, method, mode="exact") -> np.ndarray:
    d = torch.as_tensor(d)
    z = simprune.linkage(d, method, mode=mode, backend="cpu")
    assert z.dtype == torch.float64 and z.device.type == "cpu"
    return z.numpy()


# n in {2, 3, 31, 1000} on every data set (dead_duplicate needs n >= 10 to have dead and copied
# rows); 4097 only for a couple of methods and data sets (scipy itself takes seconds there).
SIZES = [2, 3, 31, 1000]
ALL_CASES = [
    (name, n) for name in datasets.ALL for n in SIZES if not (name == "dead_duplicate" and n < 10)
] + [("dead_duplicate", 10)]


@pytest.mark.parametrize("method", REDUCIBLE)
@pytest.mark.parametrize("name,n", ALL_CASES)
def test_strict_bitwise_scipy(name, n, method):
    z = cpu(data(name, n), method, "strict")
    assert_bitwise(z, scipy_z(name, n, method))


@pytest.mark.parametrize("method", REDUCIBLE)
@pytest.mark.parametrize("name,n", [(s, n) for s, n in ALL_CASES if s in TIE_FREE])
def test_exact_tie_free_same_tree(name, n, method):
    z = cpu(data(name, n), method, "exact")
    zs = scipy_z(name, n, method)
    assert_same_tree(z, zs, method)
    assert sch.is_monotonic(z)
    accepted_by_scipy(z, n)


@pytest.mark.parametrize("method", REDUCIBLE)
@pytest.mark.parametrize("n", [31, 1000])
def test_exact_zero_height_ties_same_partitions(n, method):
    z = cpu(data("dead_duplicate", n), method, "exact")
    assert_same_partitions(z, scipy_z("dead_duplicate", n, method))
    accepted_by_scipy(z, n)


@pytest.mark.parametrize("method", REDUCIBLE)
@pytest.mark.parametrize("n", [31, 300])
def test_exact_massive_ties_valid(n, method):
    d = data("quantised", n)
    z = cpu(d, method, "exact")
    assert_valid_hac(z, d, method)
    if method == "single":  # the MST weight multiset is unique
        np.testing.assert_array_equal(
            np.sort(z[:, 2]), np.sort(scipy_z("quantised", n, method)[:, 2])
        )


@pytest.mark.parametrize(
    "name,method",
    [
        ("gaussian", "average"),
        ("channel_like", "ward"),
        ("mixture", "single"),
        ("quantised", "complete"),
    ],
)
def test_n4097(name, method):
    n = 4097
    d = data(name, n)
    zs = sch.linkage(d, method)
    assert_bitwise(cpu(d, method, "strict"), zs)
    z = cpu(d, method, "exact")
    if name == "quantised":
        assert sch.is_valid_linkage(z)
    else:
        assert_same_tree(z, zs, method)


@pytest.mark.parametrize("method", REDUCIBLE)
def test_thread_count_does_not_change_the_result(method, monkeypatch):
    # Parallel from n = 64 (default 4096): the row scans and updates are split over threads.
    monkeypatch.setenv("SIMPRUNE_LINKAGE_PARALLEL_MIN_N", "64")
    d = data("quantised", 1200)  # ties: the combine of partial argmins must keep scipy's rule
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        z1 = cpu(d, method, "strict")
        torch.set_num_threads(2)
        z2 = cpu(d, method, "strict")
    finally:
        torch.set_num_threads(before)
    assert_bitwise(z1, z2)
    assert_bitwise(z2, sch.linkage(d, method))


@pytest.mark.parametrize("method", REDUCIBLE)
def test_float32_input_is_widened_like_scipy(method):
    d32 = data("gaussian", 200).astype(np.float32)
    z = cpu(torch.from_numpy(d32), method, "strict")
    assert_bitwise(z, sch.linkage(d32.astype(np.float64), method))


@pytest.mark.parametrize("method", REDUCIBLE)
def test_observations_and_square_input(method, rng):
    x = torch.from_numpy(rng.standard_normal((57, 6)))
    d = simprune.pairwise_distance(x, metric="euclidean", condensed=True, out_dtype=torch.float64)
    zs = sch.linkage(d.numpy(), method)
    assert_bitwise(simprune.linkage(x, method, mode="strict", backend="cpu").numpy(), zs)
    sq = torch.from_numpy(ssd.squareform(d.numpy()))
    z_sq = simprune.linkage(sq, method, precomputed=True, mode="strict", backend="cpu")
    assert_bitwise(z_sq.numpy(), zs)


def test_pinned_tie_case():
    # Four points on a unit square: every side ties. scipy's chain starts at 0, keeps the first
    # minimal index, and merges into the larger slot.
    d = np.array([1.0, np.sqrt(2.0), 1.0, 1.0, np.sqrt(2.0), 1.0])  # 0-1, 0-2, 0-3, 1-2, 1-3, 2-3
    for method in REDUCIBLE:
        z = cpu(d, method, "strict")
        assert_bitwise(z, sch.linkage(d, method))
        assert z[0, 0] == 0 and z[0, 1] == 1


def test_signed_zero_follows_scipy():
    # complete/single pick with Cython's min/max semantics: visible only in the sign of a zero.
    d = np.array([-0.0, 0.0, 0.0])
    for method in REDUCIBLE:
        assert_bitwise(cpu(d, method, "strict"), sch.linkage(d, method))


def test_n1_gives_empty_z():
    z = simprune.linkage(torch.zeros(1, 3), "average", backend="cpu")
    assert z.shape == (0, 4) and z.dtype == torch.float64
    z = torch.ops.simprune.linkage_cpu(torch.zeros(0, dtype=torch.float64), "ward", "exact")
    assert z.shape == (0, 4)


# ---------------------------------------------------------------------------------------------------
# Bad input: a clear error naming the problem, through the API and through the raw op.


@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.tensor([1.0, float("nan"), 2.0]), "NaN"),
        (torch.tensor([1.0, float("inf"), 2.0]), "Inf"),
        (torch.tensor([1.0, -0.5, 2.0]), "non-negative"),
        (torch.tensor([1.0, 2.0]), r"n\(n-1\)/2"),
    ],
)
def test_bad_condensed_input(bad, match):
    with pytest.raises(ValueError, match=match):
        simprune.linkage(bad, "average", backend="cpu")
    with pytest.raises(ValueError, match=match):
        torch.ops.simprune.linkage_cpu(bad.double(), "average", "exact")


def test_bad_input_api():
    with pytest.raises(ValueError, match="0 observations"):
        simprune.linkage(torch.zeros(0, 3), "average", backend="cpu")
    with pytest.raises(ValueError, match=r"\(n, n\)"):
        simprune.linkage(torch.zeros(3, 4), "average", precomputed=True, backend="cpu")


def test_bad_input_raw_op():
    op = torch.ops.simprune.linkage_cpu
    d = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="1-D condensed"):
        op(torch.zeros(3, 3, dtype=torch.float64), "average", "exact")
    with pytest.raises(TypeError, match="float32 or float64"):
        op(d.to(torch.int64), "average", "exact")
    with pytest.raises(ValueError, match="unknown linkage method"):
        op(d, "avg", "exact")
    with pytest.raises(ValueError, match="unknown mode"):
        op(d, "average", "fast")
    with pytest.raises(NotImplementedError, match="centroid"):
        op(d, "centroid", "exact")


@pytest.mark.parametrize("method", ["centroid", "median"])
def test_non_reducible_methods(method, monkeypatch):
    d = torch.from_numpy(data("gaussian", 31))
    with pytest.raises(simprune.BackendUnavailableError, match=method):
        simprune.linkage(d, method, backend="cpu")
    monkeypatch.delenv("SIMPRUNE_BACKEND", raising=False)
    z = simprune.linkage(d, method)  # auto falls back to the reference (scipy)
    assert_bitwise(z.numpy(), sch.linkage(d.numpy(), method))


def test_opcheck_linkage_cpu():
    d = torch.from_numpy(data("gaussian", 12))
    for method in REDUCIBLE:
        for mode in ("exact", "strict"):
            torch.library.opcheck(torch.ops.simprune.linkage_cpu, (d, method, mode))
    torch.library.opcheck(torch.ops.simprune.linkage_cpu, (d.float(), "average", "exact"))


# ---------------------------------------------------------------------------------------------------
# Property tests: arbitrary small inputs, ties included (integer-valued distances).


@st.composite
def condensed(draw):
    """(d, euclidean): integer grid points (Euclidean, heavy ties) or arbitrary non-negative floats."""
    n = draw(st.integers(2, 24))
    if draw(st.booleans()):
        dim = draw(st.integers(1, 3))
        pts = draw(st.lists(st.integers(0, 3), min_size=n * dim, max_size=n * dim))
        return ssd.pdist(np.asarray(pts, dtype=np.float64).reshape(n, dim)), True
    m = n * (n - 1) // 2
    vals = draw(
        st.lists(
            st.floats(0, 1e3, allow_nan=False, allow_infinity=False, allow_subnormal=False),
            min_size=m,
            max_size=m,
        )
    )
    return np.asarray(vals, dtype=np.float64), False


@settings(max_examples=150, deadline=None)
@given(case=condensed(), method=st.sampled_from(REDUCIBLE))
def test_property_strict_is_scipy_and_exact_is_valid(case, method):
    d, euclidean = case
    assume(euclidean or method != "ward")  # ward's update assumes Euclidean distances
    assert_bitwise(cpu(d, method, "strict"), sch.linkage(d, method))
    z = cpu(d, method, "exact")
    accepted_by_scipy(z, z.shape[0] + 1)
    assert_valid_hac(z, d, method)


# ---------------------------------------------------------------------------------------------------
# The shared header is device code too: nvcc must compile it, with no fused multiply-add.

_HD_PROBE = r"""
#include "simprune/linkage_common.h"
using namespace simprune::linkage;
__global__ void probe(double* o, double* Z, int64_t* parent, int64_t* size, int64_t n) {
  o[3] = lance_williams<kWard>(o[0], o[1], o[2], 1, 2, 3)
       + lance_williams(kAverage, o[0], o[1], o[2], 1, 2, 3)
       + lance_williams<kWeighted>(o[0], o[1], o[2], 1, 2, 3)
       + lance_williams<kCentroid>(o[0], o[1], o[2], 1, 2, 3)
       + lance_williams<kMedian>(o[0], o[1], o[2], 1, 2, 3)
       + lance_williams_pair<kComplete>(o[0], o[1], o[2], o[0], o[1], o[2], 1, 1, 1, 1);
  int64_t y = 0;
  double cur = 0;
  chain_pick(true, 1, o[0], o[1], 2, &y, &cur);
  o[4] = cur + (nn_better(o[0], 1, o[1], 2) ? 1.0 : 0.0) + effective_height(o[0], o[1], o[2]);
  label(Z, n, parent, size);
}
"""


def test_shared_header_compiles_for_the_device(tmp_path):
    import os
    import shutil
    import subprocess

    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found")
    inc = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc", "include"
    )
    src = tmp_path / "probe.cu"
    src.write_text(_HD_PROBE)
    ptx = tmp_path / "probe.ptx"
    out = subprocess.run(
        [nvcc, "-std=c++20", "-arch=sm_90", "-I", inc, "-ptx", str(src), "-o", str(ptx)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    text = ptx.read_text()
    # Explicitly rounded operations only: ptxas never contracts those into an FMA.
    assert "fma.rn.f64" not in text
    assert "mul.rn.f64" in text and "sqrt.rn.f64" in text and "div.rn.f64" in text
