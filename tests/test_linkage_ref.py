"""The linkage front end (input forms, validation), the reference backend (scipy) and the cut helpers,
with scipy as the oracle."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.cluster.hierarchy as sch
import scipy.spatial.distance as ssd
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import simprune
from simprune.testing import DATASETS, assert_bitwise, quantised, same_partition
from tests._helpers import data, scipy_z

METHODS = ["single", "complete", "average", "weighted", "ward", "centroid", "median"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n", [2, 3, 31, 200])
def test_reference_matches_scipy_on_observations(method, n, rng):
    x = rng.standard_normal((n, 5))
    z = simprune.linkage(torch.from_numpy(x), method, backend="torch")
    zs = sch.linkage(x, method)
    assert z.dtype == torch.float64 and z.shape == (n - 1, 4)
    np.testing.assert_array_equal(z[:, [0, 1, 3]].numpy(), zs[:, [0, 1, 3]])
    np.testing.assert_allclose(z[:, 2].numpy(), zs[:, 2], rtol=1e-12)
    assert simprune.is_valid_linkage(z)


@pytest.mark.parametrize("metric", ["sqeuclidean", "cosine"])
def test_metric_for_observations(metric, rng):
    x = rng.standard_normal((20, 4))
    z = simprune.linkage(torch.from_numpy(x), "average", metric)
    zs = sch.linkage(ssd.pdist(x, metric), "average")
    np.testing.assert_array_equal(z[:, [0, 1, 3]].numpy(), zs[:, [0, 1, 3]])
    np.testing.assert_allclose(z[:, 2].numpy(), zs[:, 2], rtol=1e-12)


def test_input_forms_agree(rng):
    x = rng.standard_normal((25, 3))
    d = ssd.pdist(x)
    z_obs = simprune.linkage(torch.from_numpy(x), "complete")
    z_cond = simprune.linkage(torch.from_numpy(d), "complete")
    z_sq = simprune.linkage(torch.from_numpy(ssd.squareform(d)), "complete", precomputed=True)
    z_f32 = simprune.linkage(torch.from_numpy(d).float(), "complete")
    assert torch.equal(z_cond, z_sq)
    np.testing.assert_allclose(z_obs.numpy(), z_cond.numpy(), rtol=1e-12)
    np.testing.assert_array_equal(z_f32[:, [0, 1, 3]].numpy(), z_cond[:, [0, 1, 3]].numpy())


def test_n1_empty_and_n2():
    assert simprune.linkage(torch.zeros(1, 3)).shape == (0, 4)
    z = simprune.linkage(torch.tensor([[0.0], [2.0]], dtype=torch.float64), "average")
    assert z.tolist() == [[0.0, 1.0, 2.0, 2.0]]
    assert simprune.linkage(torch.zeros(1, 1), precomputed=True).shape == (0, 4)


@pytest.mark.parametrize(
    "x,kwargs,err,match",
    [
        (torch.zeros(0, 3), {}, ValueError, "0 observations"),
        (torch.zeros(0), {}, ValueError, "ambiguous"),
        (torch.tensor([1.0, float("nan"), 2.0]), {}, ValueError, "NaN"),
        (torch.tensor([1.0, -1.0, 2.0]), {}, ValueError, "non-negative"),
        (torch.tensor([1.0, 2.0]), {}, ValueError, "n\\(n-1\\)/2"),
        (torch.zeros(2, 3), {"precomputed": True}, ValueError, "\\(n, n\\)"),
        (torch.tensor([[0.0, 1.0], [2.0, 0.0]]), {"precomputed": True}, ValueError, "symmetric"),
        (torch.tensor([[1.0, 1.0], [1.0, 0.0]]), {"precomputed": True}, ValueError, "diagonal"),
        (torch.zeros(2, 2, 2), {}, ValueError, "3-D"),
        (torch.zeros(4, 2, dtype=torch.int32), {}, TypeError, "floating-point"),
        (torch.zeros(4, 2), {"method": "ward", "metric": "cosine"}, ValueError, "Euclidean"),
        (torch.zeros(4, 2), {"method": "upgma"}, ValueError, "unknown linkage method"),
        (torch.zeros(4, 2), {"mode": "fast"}, ValueError, "unknown mode"),
        (torch.zeros(4, 2), {"metric": "hamming"}, ValueError, "unknown metric"),
        (torch.zeros(4, 2), {"backend": "cuda"}, simprune.BackendUnavailableError, "cuda"),
    ],
)
def test_bad_inputs_get_clear_errors(x, kwargs, err, match):
    with pytest.raises(err, match=match):
        simprune.linkage(x, **kwargs)


def test_env_backend_override(monkeypatch):
    x = torch.randn(6, 2)
    monkeypatch.setenv("SIMPRUNE_BACKEND", "torch")
    assert simprune.linkage(x).shape == (5, 4)
    monkeypatch.setenv("SIMPRUNE_BACKEND", "cuda")
    with pytest.raises(simprune.BackendUnavailableError):
        simprune.linkage(x)


def test_linkage_batched_reference_backend():
    """The batched API and the reference (CPU): one Z per problem, each scipy's."""
    sizes = [1, 2, 3, 64, 100]
    ds = [torch.from_numpy(data("gaussian", n)) if n > 1 else torch.zeros(0) for n in sizes]
    zs = simprune.linkage_batched(ds, "ward", backend="torch")
    assert [tuple(z.shape) for z in zs] == [(max(n - 1, 0), 4) for n in sizes]
    for n, z in zip(sizes, zs, strict=True):
        if n > 1:
            assert_bitwise(z.numpy(), scipy_z("gaussian", n, "ward"))
    assert simprune.linkage_batched([], "average") == []
    with pytest.raises(ValueError, match="non-negative"):
        simprune.linkage_batched([torch.tensor([1.0, -1.0, 2.0])], backend="torch")
    with pytest.raises(ValueError, match="1-D"):
        simprune.linkage_batched([torch.zeros(2, 2)], backend="torch")


# ---- cuts --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gaussian", "mixture", "dead_duplicate"])
def test_cut_threshold_and_maxclust_match_fcluster(name):
    x = DATASETS[name](60)
    zs = sch.linkage(x, "average")
    z = torch.from_numpy(zs)
    for t in np.quantile(zs[:, 2], [0.1, 0.5, 0.9]):
        np.testing.assert_array_equal(
            simprune.cut_threshold(z, t).numpy(), sch.fcluster(zs, t, "distance") - 1
        )
    for k in (1, 5, 20, 60):
        np.testing.assert_array_equal(
            simprune.cut_maxclust(z, k).numpy(), sch.fcluster(zs, k, "maxclust") - 1
        )


def test_cut_n_clusters_exact_count_even_with_ties():
    x = quantised(80, 2, seed=4)  # massive ties: maxclust may return fewer clusters
    zs = sch.linkage(x, "complete")
    short = [k for k in range(1, 81) if len(np.unique(sch.fcluster(zs, k, "maxclust"))) != k]
    assert short, "the data set should exhibit scipy's maxclust shortfall under ties"
    for k in range(1, 81):
        lab = simprune.cut_n_clusters(torch.from_numpy(zs), k)
        assert len(torch.unique(lab)) == k


def test_cut_n_clusters_equals_maxclust_without_ties(rng):
    zs = sch.linkage(rng.standard_normal((40, 3)), "ward")
    for k in (1, 2, 7, 39, 40):
        a = simprune.cut_n_clusters(torch.from_numpy(zs), k).numpy()
        b = sch.fcluster(zs, k, "maxclust")
        assert same_partition(a, b)


def test_cut_rejects_invalid_z():
    bad = {
        "does not exist": [[0.0, 5.0, 1.0, 2.0]],
        "negative heights": [[0.0, 1.0, -1.0, 2.0]],
        "more than once": [[0.0, 1.0, 1.0, 2.0], [0.0, 1.0, 2.0, 3.0]],
        "sizes": [[0.0, 1.0, 1.0, 3.0]],
        "integers": [[0.5, 1.0, 1.0, 2.0]],
    }
    for why, z in bad.items():
        with pytest.raises(ValueError, match=why):
            simprune.cut_threshold(torch.tensor(z), 0.5)
    with pytest.raises(ValueError, match="shape"):
        simprune.cut_threshold(torch.zeros(3, 3), 0.5)
    z = torch.from_numpy(sch.linkage(np.arange(4.0)[:, None]))
    with pytest.raises(ValueError, match="k must be"):
        simprune.cut_n_clusters(z, 0)


# ---- representatives and redundancy scores ------------------------------------------------------


def test_representatives_energy_and_medoid():
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    energy = torch.tensor([1.0, 3.0, 2.0, 2.0, 0.5, 0.1])
    assert simprune.representatives(labels, energy=energy).tolist() == [1, 2, 5]
    assert simprune.representatives(labels, energy=energy, keep_per_cluster=2).tolist() == [
        0,
        1,
        2,
        3,
        5,
    ]
    pts = torch.tensor([0.0, 1.0, 10.0, 11.0, 12.5, 50.0])[:, None]
    dm = simprune.pairwise_distance(pts, metric="euclidean")
    assert simprune.representatives(labels, distances=dm, method="medoid").tolist() == [0, 3, 5]
    with pytest.raises(ValueError, match="energy="):
        simprune.representatives(labels)
    with pytest.raises(ValueError, match="shape"):
        simprune.representatives(labels, energy=torch.ones(3))
    with pytest.raises(ValueError, match="unknown method"):
        simprune.representatives(labels, energy=energy, method="random")


def test_redundancy_scores_small_example():
    # 0 and 1 merge first (h=1), then 2 joins (h=4); priorities: 1 > 0, 2 highest.
    x = torch.tensor([[0.0], [1.0], [5.0]], dtype=torch.float64)
    z = simprune.linkage(x, "single")
    s, order = simprune.redundancy_scores(
        z, priority=torch.tensor([0.0, 1.0, 2.0]), return_order=True
    )
    assert s.tolist() == [1.0, 4.0, float("inf")]
    assert order.tolist() == [0, 1]


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 40), st.integers(0, 10_000), st.sampled_from(["average", "complete", "ward"]))
def test_removing_k_lowest_equals_cutting_into_n_minus_k(n, seed, method):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3))
    energy = torch.from_numpy(rng.random(n))
    z = simprune.linkage(torch.from_numpy(x), method)
    scores, order = simprune.redundancy_scores(z, priority=energy, return_order=True)
    assert torch.isinf(scores).sum() == 1
    # tie-free heights: the removal order is the score order
    assert torch.equal(torch.argsort(scores, stable=True)[: n - 1], order)
    for k in range(n):
        kept_by_score = sorted(set(range(n)) - set(order[:k].tolist()))
        labels = simprune.cut_n_clusters(z, n - k)
        kept_by_cut = simprune.representatives(labels, energy=energy).tolist()
        assert kept_by_score == kept_by_cut
