"""simprune.functional: the plain-tensor API, against scipy as the oracle."""

from __future__ import annotations

import doctest
import importlib
import math

import numpy as np
import pytest
import scipy.cluster.hierarchy as sch
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import pdist

import simprune
from simprune import functional as F
from simprune.testing import same_partition

SIZES = [1, 2, 3, 7, 31, 64]


def _x(n: int, d: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _scipy_z(v: torch.Tensor, method: str = "average", metric: str = "euclidean") -> np.ndarray:
    return sch.linkage(pdist(v.numpy(), metric), method)


@pytest.mark.parametrize(
    "module",
    [
        "simprune.functional",
        "simprune.integrations.nn_prune",
        "simprune.integrations.torch_pruning",
    ],
)
def test_docstrings_run(module):
    res = doctest.testmod(importlib.import_module(module), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert res.attempted >= 4 and res.failed == 0


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("method", ["average", "complete", "single", "ward"])
def test_scores_match_scipy_dendrogram(n, method):
    x = _x(n, seed=n)
    s = F.score_channels(x, metric="euclidean", method=method)
    assert s.shape == (n,) and s.dtype == torch.float64
    if n == 1:
        assert math.isinf(float(s[0]))
        return
    z = torch.from_numpy(_scipy_z(x, method))
    ref = simprune.redundancy_scores(z, simprune.channel_energy(x))
    torch.testing.assert_close(s, ref, rtol=1e-9, atol=1e-12)
    # Each removed channel scores the height of a merge; the most energetic one survives.
    assert int(torch.isinf(s).sum()) == 1
    assert int(torch.argmax(simprune.channel_energy(x))) == int(torch.nonzero(torch.isinf(s)))
    assert sorted(s[torch.isfinite(s)].tolist()) == pytest.approx(sorted(z[:, 2].tolist()))


@pytest.mark.parametrize("n", [2, 3, 7, 31])
def test_n_keep_cut_keeps_what_the_scores_keep(n):
    x = _x(n, d=4, seed=100 + n)
    for n_keep in range(1, n + 1):
        labels, kept, scores = F.cluster_channels(x, n_keep=n_keep, metric="euclidean")
        assert len(set(labels.tolist())) == n_keep and kept.numel() == n_keep
        lowest = set(torch.argsort(scores)[: n - n_keep].tolist())
        assert set(kept.tolist()) == set(range(n)) - lowest
        # scipy's maxclust cut (distinct heights) gives the same partition.
        ref = sch.fcluster(_scipy_z(x), n_keep, "maxclust")
        assert same_partition(labels.numpy(), ref)
        # One representative per cluster, the most energetic one.
        e = simprune.channel_energy(x)
        for c in range(n_keep):
            members = torch.nonzero(labels == c).flatten()
            assert int(members[torch.argmax(e[members])]) in kept.tolist()


@pytest.mark.parametrize("normalize", [False, True])
def test_threshold_cut_is_scipy_fcluster(normalize):
    x = _x(40, d=3, seed=7)
    z = _scipy_z(x)
    scale = math.sqrt(float((x**2).sum(1).mean())) if normalize else 1.0
    for t in (0.0, 0.3, 0.8, 1.5, 100.0):
        labels, kept, scores = F.cluster_channels(
            x, threshold=t, metric="euclidean", normalize=normalize
        )
        ref = sch.fcluster(z, t * scale, "distance")
        assert same_partition(labels.numpy(), ref)
        assert kept.numel() == len(set(ref.tolist()))
        # Every channel not kept scores at most t (it was merged below the threshold).
        gone = sorted(set(range(40)) - set(kept.tolist()))
        assert bool((scores[gone] <= t + 1e-12).all())
    zs = F.channel_dendrogram(x, metric="euclidean", normalize=normalize)
    torch.testing.assert_close(zs[:, 2], torch.from_numpy(z[:, 2]) / scale)


def test_gaussian_metric_from_bn_parameters():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(12, 4, 3, 3, generator=g, dtype=torch.float64)
    gamma = torch.rand(12, generator=g, dtype=torch.float64) + 0.5
    beta = torch.randn(12, generator=g, dtype=torch.float64)
    s = F.score_channels(w, gamma=gamma, beta=beta)  # metric None -> gaussian
    v = simprune.channel_descriptors(w, metric="gaussian", gamma=gamma, beta=beta)
    ref = simprune.redundancy_scores(torch.from_numpy(_scipy_z(v)), simprune.channel_energy(v))
    torch.testing.assert_close(s, ref, rtol=1e-9, atol=1e-12)
    # The metric is scale-invariant in the filters.
    torch.testing.assert_close(F.score_channels(w * 3.0, gamma=gamma, beta=beta), s)
    # Without gamma/beta, None means "linear": rows plus bias.
    bias = torch.randn(12, generator=g, dtype=torch.float64)
    v_lin = torch.cat([bias[:, None], w.reshape(12, -1)], 1)
    ref_lin = simprune.redundancy_scores(
        torch.from_numpy(_scipy_z(v_lin)), simprune.channel_energy(v_lin)
    )
    torch.testing.assert_close(F.score_channels(w, bias=bias), ref_lin, rtol=1e-9, atol=1e-12)


def test_cosine_and_priorities():
    x = _x(9, seed=9)
    s = F.score_channels(x, metric="cosine", priority=None)
    z = torch.from_numpy(_scipy_z(x, metric="cosine"))
    torch.testing.assert_close(s, simprune.redundancy_scores(z), rtol=1e-9, atol=1e-12)
    assert math.isinf(float(s[0]))  # equal priority: the lowest index survives
    pr = torch.arange(9.0)
    s2 = F.score_channels(x, metric="cosine", priority=pr)
    assert math.isinf(float(s2[8]))  # the highest priority survives
    res = F.cluster_channels(x, n_keep=1, metric="cosine", priority=pr)
    assert res.representatives.tolist() == [8]
    # Cosine heights are scale-free already: normalize changes nothing.
    torch.testing.assert_close(
        F.score_channels(x, metric="cosine", normalize=True),
        F.score_channels(x, metric="cosine"),
    )


def test_batched_list_equals_single_calls():
    xs = [_x(n, d=d, seed=n) for n, d in ((5, 3), (1, 3), (17, 8), (2, 2))]
    batched = F.score_channels(xs, metric="euclidean", normalize=True)
    assert isinstance(batched, list) and len(batched) == 4
    for x, s in zip(xs, batched, strict=True):
        torch.testing.assert_close(s, F.score_channels(x, metric="euclidean", normalize=True))
    zs = F.channel_dendrogram(xs, metric="euclidean")
    assert [tuple(z.shape) for z in zs] == [(4, 4), (0, 4), (16, 4), (1, 4)]
    # Per-layer BN parameters come as lists.
    gammas = [torch.ones(x.shape[0]) for x in xs]
    betas = [torch.zeros(x.shape[0]) for x in xs]
    out = F.score_channels(xs, gamma=gammas, beta=betas)
    assert [o.shape[0] for o in out] == [5, 1, 17, 2]


def test_duplicates_score_zero_and_go_first():
    x = _x(6, seed=1)
    x = torch.cat([x, x[:3]])  # channels 6, 7, 8 duplicate 0, 1, 2
    s = F.score_channels(x, metric="euclidean")
    assert sorted(torch.nonzero(s == 0).flatten().tolist()) in ([0, 1, 2], [6, 7, 8])
    labels, kept, _ = F.cluster_channels(x, n_keep=6, metric="euclidean", priority=None)
    assert kept.tolist() == [0, 1, 2, 3, 4, 5]
    assert labels[6:].tolist() == labels[:3].tolist()


def test_float32_input_and_backend_names():
    x = _x(20, seed=2).float()
    s32 = F.score_channels(x, metric="euclidean", backend="torch")
    s64 = F.score_channels(x.double(), metric="euclidean", backend="torch")
    assert s32.dtype == torch.float64
    torch.testing.assert_close(s32, s64, rtol=1e-5, atol=1e-6)
    with pytest.raises(simprune.BackendUnavailableError):
        F.score_channels(x, backend="cuda")
    if simprune.has_c_extension():
        s_cpu = F.score_channels([x, x[:5]], metric="euclidean", backend="cpu")
        torch.testing.assert_close(s_cpu[0], s32)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 24),
    d=st.integers(1, 6),
    seed=st.integers(0, 2**16),
    frac=st.floats(0, 1),
    method=st.sampled_from(["average", "complete", "single", "weighted", "ward"]),
)
def test_property_cut_equals_lowest_scores(n, d, seed, frac, method):
    x = _x(n, d=d, seed=seed)
    n_keep = max(1, round(frac * n))
    labels, kept, scores = F.cluster_channels(x, n_keep=n_keep, metric="euclidean", method=method)
    assert kept.numel() == n_keep == len(set(labels.tolist()))
    order = torch.argsort(scores, stable=True)
    assert set(kept.tolist()) == set(order[n - n_keep :].tolist())
    assert kept.tolist() == sorted(kept.tolist())


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({}, ValueError, "exactly one"),
        ({"n_keep": 2, "threshold": 0.1}, ValueError, "exactly one"),
        ({"n_keep": 0}, ValueError, "n_keep"),
        ({"n_keep": 6}, ValueError, "n_keep"),
        ({"n_keep": 2.5}, TypeError, "n_keep"),
        ({"threshold": -1.0}, ValueError, "threshold"),
        ({"threshold": float("nan")}, ValueError, "threshold"),
        ({"n_keep": 2, "metric": "l3"}, ValueError, "metric"),
        ({"n_keep": 2, "method": "nearest"}, ValueError, "method"),
        ({"n_keep": 2, "metric": "cosine", "method": "ward"}, ValueError, "Euclidean"),
        ({"n_keep": 2, "priority": torch.ones(3)}, ValueError, "priority"),
        ({"n_keep": 2, "priority": "norm"}, ValueError, "priority"),
        ({"n_keep": 2, "metric": "gaussian"}, ValueError, "gamma"),
    ],
)
def test_bad_arguments(kwargs, err, match):
    with pytest.raises(err, match=match):
        F.cluster_channels(_x(5), **kwargs)


def test_bad_inputs():
    x = _x(5)
    x[2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        F.score_channels(x)
    with pytest.raises(ValueError, match="n_channels"):
        F.score_channels(torch.zeros(0, 3))
    with pytest.raises(TypeError, match="floating"):
        F.score_channels(torch.ones(4, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="layer 1"):
        F.score_channels([_x(3), torch.zeros(0, 2)])
    with pytest.raises(ValueError, match="list of 2"):
        F.score_channels([_x(3), _x(4)], gamma=[torch.ones(3)])
    with pytest.raises(ValueError, match="empty list"):
        F.score_channels([])
    with pytest.raises(TypeError, match="one layer"):
        F.cluster_channels([_x(3)], n_keep=1)


# ------------------------------------------------------------ torch.nn.utils.prune method


def _kept_channels(mask: torch.Tensor, dim: int) -> list[int]:
    m = mask.movedim(dim, 0).reshape(mask.shape[dim], -1)
    assert bool(((m == 0) | (m == 1)).all())
    assert bool((m.amin(1) == m.amax(1)).all())  # whole channels, never parts
    return torch.nonzero(m[:, 0]).flatten().tolist()


@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_similarity_structured_masks_the_cut(dim, metric):
    from torch import nn
    from torch.nn.utils import prune as nn_prune

    from simprune.integrations.nn_prune import similarity_structured

    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, 3)
    w = conv.weight.detach().clone()
    similarity_structured(conv, "weight", amount=0.3, dim=dim, metric=metric)
    n = w.shape[dim]
    k = round(0.3 * n)
    kept = _kept_channels(conv.weight_mask, dim)
    rows = w.movedim(dim, 0).reshape(n, -1)
    ref = F.cluster_channels(rows, n_keep=n - k, metric=metric)
    assert kept == ref.representatives.tolist()
    torch.testing.assert_close(conv.weight, w * conv.weight_mask)
    # Iterative: a second call prunes among the channels still alive, the first ones stay pruned.
    similarity_structured(conv, "weight", amount=2, dim=dim, metric=metric)
    kept2 = _kept_channels(conv.weight_mask, dim)
    assert len(kept2) == n - k - 2 and set(kept2) <= set(kept)
    nn_prune.remove(conv, "weight")
    assert not hasattr(conv, "weight_mask")
    assert _kept_channels((conv.weight != 0).to(torch.float32), dim) == kept2


def test_similarity_structured_bad_arguments():
    from torch import nn

    from simprune.integrations.nn_prune import SimilarityStructured, similarity_structured

    with pytest.raises(ValueError, match="metric"):
        SimilarityStructured(0.5, metric="gaussian")
    with pytest.raises(ValueError):
        similarity_structured(nn.Linear(3, 4), "weight", amount=1.5)
    with pytest.raises(ValueError):
        similarity_structured(nn.Linear(3, 4), "weight", amount=9)
    with pytest.raises(IndexError):
        similarity_structured(nn.Linear(3, 4), "weight", amount=1, dim=3)
