"""The reference pairwise distance against scipy (the oracle), its invariants and its errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
import scipy.spatial.distance as ssd
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import simprune
from simprune import BackendUnavailableError, testing

SHAPES = [(1, 1), (2, 3), (3, 1), (17, 7), (31, 33), (64, 2)]


@pytest.mark.parametrize("metric", ["sqeuclidean", "euclidean", "cosine"])
@pytest.mark.parametrize("n,d", SHAPES)
def test_matches_scipy_square_and_condensed(metric, n, d, rng):
    x = rng.standard_normal((n, d))
    got = simprune.pairwise_distance(torch.from_numpy(x), metric=metric, backend="torch")
    want = ssd.cdist(x, x, metric)
    np.fill_diagonal(want, 0.0)
    assert got.dtype == torch.float64 and got.shape == (n, n)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-13)
    cond = simprune.pairwise_distance(
        torch.from_numpy(x), metric=metric, condensed=True, backend="torch"
    )
    np.testing.assert_allclose(cond.numpy(), ssd.pdist(x, metric), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("metric", ["sqeuclidean", "euclidean", "cosine"])
def test_cross_distances_match_scipy(metric, rng):
    x, y = rng.standard_normal((13, 5)), rng.standard_normal((8, 5))
    got = simprune.pairwise_distance(torch.from_numpy(x), torch.from_numpy(y), metric=metric)
    np.testing.assert_allclose(got.numpy(), ssd.cdist(x, y, metric), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("n,d", [(97, 64), (300, 256)])
def test_near_duplicates_are_accurate(n, d):
    """The pairs pruning acts on: 5 % near-copies (noise 1e-3) of offset data. scipy's pdist is a direct
    fp64 difference sum, accurate to ~1e-16 relative: the reference must agree to 1e-12 everywhere, and the
    float32 output to 1e-6 (the contract of every fp32 kernel)."""
    x = testing.channel_like(n, d, seed=3)
    want = ssd.pdist(x, "sqeuclidean")
    near = want < 1e-3 * np.median(want)
    assert near.sum() >= int(0.04 * n)  # the data really has near-duplicates
    got = simprune.pairwise_distance(torch.from_numpy(x), condensed=True).numpy()
    rel = np.abs(got - want) / want
    assert rel.max() <= 1e-12, rel.max()
    got32 = simprune.pairwise_distance(
        torch.from_numpy(x).float(), condensed=True, out_dtype=torch.float32
    )
    x32 = torch.from_numpy(x).float().double().numpy()  # the values the float32 input holds
    want32 = ssd.pdist(x32, "sqeuclidean")
    assert np.max(np.abs(got32.double().numpy() - want32) / want32) <= 1e-6


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_input_dtypes(dtype, rng):
    x = torch.from_numpy(rng.standard_normal((11, 6))).to(dtype)
    got = simprune.pairwise_distance(x)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    want = ssd.cdist(x.double().numpy(), x.double().numpy(), "sqeuclidean")
    np.fill_diagonal(want, 0)
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-6, atol=1e-6)
    got64 = simprune.pairwise_distance(x, out_dtype=torch.float64)
    assert got64.dtype == torch.float64
    np.testing.assert_allclose(got64.numpy(), want, rtol=1e-12, atol=1e-12)


def test_invariants_exact(rng):
    x = torch.from_numpy(testing.dead_duplicate(50, 9, seed=1))
    for metric in ("sqeuclidean", "euclidean", "cosine"):
        d = simprune.pairwise_distance(x, metric=metric)
        assert torch.equal(d, d.T), "not bit-symmetric"
        assert bool((d.diagonal() == 0).all()), "diagonal not exactly 0"
        assert bool((d >= 0).all())
    # exact copies have distance exactly 0
    d = simprune.pairwise_distance(x)
    dup = (x[:, None, :] == x[None, :, :]).all(-1)
    assert bool((d[dup] == 0).all())


def test_cosine_zero_rows_documented_values():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    d = simprune.pairwise_distance(x, metric="cosine")
    assert d[0, 1] == 0.5 and d[0, 2] == 0.0 and d[0, 3] == 0.5
    assert d[1, 3] == pytest.approx(1.0)


def test_condensed_is_pdist_order(rng):
    x = rng.standard_normal((7, 3))
    sq = simprune.pairwise_distance(torch.from_numpy(x))
    cond = simprune.pairwise_distance(torch.from_numpy(x), condensed=True)
    np.testing.assert_array_equal(cond.numpy(), ssd.squareform(sq.numpy(), checks=False))


def test_array_like_inputs():
    d = simprune.pairwise_distance(np.array([[0.0, 0.0], [3.0, 4.0]]), metric="euclidean")
    assert d[0, 1] == 5.0


@pytest.mark.parametrize(
    "x,kwargs,err,match",
    [
        (torch.tensor([[0.0, float("nan")]]), {}, ValueError, "NaN"),
        (torch.tensor([[0.0, float("inf")], [1.0, 1.0]]), {}, ValueError, "Inf"),
        (torch.zeros(2, 3, 4), {}, ValueError, "2-D"),
        (torch.zeros(5), {}, ValueError, "2-D"),
        (torch.zeros(0, 3), {}, ValueError, "0 rows"),
        (torch.zeros(3, 0), {}, ValueError, "0 features"),
        (torch.zeros(3, 2, dtype=torch.int64), {}, TypeError, "floating-point"),
        (torch.zeros(3, 2), {"metric": "manhattan"}, ValueError, "unknown metric"),
        (torch.zeros(3, 2), {"out_dtype": torch.float16}, TypeError, "out_dtype"),
        (torch.zeros(3, 2), {"precision": "sloppy"}, ValueError, "precision"),
        (torch.zeros(3, 2), {"y": torch.zeros(3, 3)}, ValueError, "same number of features"),
        (torch.zeros(3, 2), {"y": torch.zeros(3, 2), "condensed": True}, ValueError, "y=None"),
        (torch.zeros(3, 2), {"y": torch.zeros(3, 2, device="meta")}, ValueError, "meta"),
        (torch.zeros(3, 2), {"backend": "bogus"}, ValueError, "unknown backend"),
        (torch.zeros(3, 2), {"backend": "cuda"}, BackendUnavailableError, "cuda"),
        ("not a tensor", {}, TypeError, "tensor"),
    ],
)
def test_bad_inputs_get_clear_errors(x, kwargs, err, match):
    with pytest.raises(err, match=match):
        simprune.pairwise_distance(x, **kwargs)


def test_batched_matches_single(rng):
    xs = [torch.from_numpy(rng.standard_normal((n, d))) for n, d in [(1, 4), (5, 2), (12, 9)]]
    outs = simprune.pairwise_distance_batched(xs, metric="euclidean")
    for x, out in zip(xs, outs, strict=True):
        torch.testing.assert_close(
            out, simprune.pairwise_distance(x, metric="euclidean", condensed=True), rtol=0, atol=0
        )
    with pytest.raises(ValueError, match="group 1"):
        simprune.pairwise_distance_batched([xs[0], torch.full((2, 2), float("nan"))])


@settings(max_examples=40, deadline=None)
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(1, 12), st.integers(1, 6)),
        elements=st.floats(-1e3, 1e3, allow_nan=False),
    ),
    st.sampled_from(["sqeuclidean", "euclidean"]),
)
def test_property_matches_scipy(x, metric):
    got = simprune.pairwise_distance(torch.from_numpy(x), metric=metric).numpy()
    want = ssd.cdist(x, x, metric)
    scale = max(1.0, float(np.abs(x).max()) ** (2 if metric == "sqeuclidean" else 1))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 * scale)
    assert np.array_equal(got, got.T) and not np.any(np.diag(got))


# ------------------------------------------------------------------------------------------------
# host memory: a CPU problem that cannot fit is refused up front, needed vs available bytes
# ------------------------------------------------------------------------------------------------
def _no_kernel(*args, **kwargs):
    raise AssertionError("the backend ran although the problem cannot fit")


@pytest.mark.parametrize("condensed", [False, True])
@pytest.mark.parametrize("backend", simprune.available_backends("pairwise_distance", "cpu"))
def test_huge_problem_refused_before_allocating(monkeypatch, backend, condensed):
    """n = 200,000 needs >= 80 GB for the result alone: refused by the shared host-memory check
    (simprune._checks.check_host_memory) before the backend runs, naming both byte counts."""
    import simprune.distance as sd

    real = sd.resolve
    monkeypatch.setattr(sd, "resolve", lambda *a, **k: (real(*a, **k)[0], _no_kernel))
    x = torch.zeros(200_000, 2)
    with pytest.raises(torch.OutOfMemoryError) as e:
        simprune.pairwise_distance(x, condensed=condensed, backend=backend)
    msg = str(e.value)
    assert f"backend={backend!r}" in msg and "n = 200000" in msg
    need = int(re.search(r"needs (\d+) bytes", msg).group(1))
    avail = int(re.search(r"only (\d+) bytes", msg).group(1))
    assert need >= 200_000 * 199_999 // 2 * 4 > avail


def test_memory_check_follows_available_bytes(monkeypatch):
    """The limit is the available host memory: just below the need refuses, at the need runs."""
    import simprune._checks as checks

    x = torch.randn(50, 4)
    need = {}

    def fake(value):
        monkeypatch.setattr(checks, "available_host_bytes", lambda: value)

    fake(1)
    with pytest.raises(torch.OutOfMemoryError, match=r"needs (\d+) bytes") as e:
        simprune.pairwise_distance(x, backend="torch")
    need["torch"] = int(re.search(r"needs (\d+) bytes", str(e.value)).group(1))
    assert need["torch"] >= 50 * 50 * (4 + 26)  # the result + the reference's working matrices
    fake(need["torch"] - 1)
    with pytest.raises(torch.OutOfMemoryError):
        simprune.pairwise_distance(x, backend="torch")
    fake(need["torch"])
    assert simprune.pairwise_distance(x, backend="torch").shape == (50, 50)
    fake(None)  # unknown: nothing is refused
    assert simprune.pairwise_distance(x, backend="torch").shape == (50, 50)
    fake(1)
    with pytest.raises(torch.OutOfMemoryError, match="pairwise_distance_batched"):
        simprune.pairwise_distance_batched([x, x[:7]], backend="torch")
